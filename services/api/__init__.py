"""ficha's HTTP API (Litestar): the read models and the operator's commands, per tenant."""
