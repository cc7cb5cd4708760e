"""gRPC wiring only: validation, conversion, status codes. No business rules live here."""
