"""Generated protobuf messages and gRPC stubs of the wire API (``python -m collector.codegen``).

The agent imports only this package and ``collector.bundle_verify`` from the collector.
"""
