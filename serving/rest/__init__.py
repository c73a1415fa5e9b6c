"""KServe V2 REST (HTTP/JSON) beside gRPC."""
