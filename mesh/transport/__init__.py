"""How calls travel between gateways and nodes over NATS."""
