"""Type mapping: what each PostgreSQL type is on the wire and in the cloud."""
