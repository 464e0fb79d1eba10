"""Constraint kinds evaluated to plain values (``kinds``), their JSON form (``serial``) and the
vocabulary their masks range over (``vocabulary``): what the query runtime enforces on the client
and the engine enforces inside the batch, one code for both."""
