"""JSON-RPC 2.0 over a Unix socket: protocol, method table, errors, server and client."""
