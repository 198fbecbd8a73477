"""Usage records and decision records in Redis (Streams and keys), and the queries over them.

``records`` builds the protobuf messages (``protos/extproc/ledger/v1/ledger.proto``) from
decisions and settlements, ``writer`` appends them in the background, ``query`` and
``explain`` answer "why was this blocked?" and "where did my tokens go?".
"""
