-- Release a request's concurrency leases the moment it ends (Envoy closed the deciding ext_proc
-- stream), ahead of its settlement from the access log, which releases them too (a no-op then),
-- trues up the tokens and writes the record. A client that sends its next request as soon as
-- the last one ended must find its slot free.
--
-- KEYS     the request's concurrency keys (one hash tag)
-- ARGV[1]  lease id (the decision id)
for i = 1, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
return 1
