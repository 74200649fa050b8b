"""medrt serve: the gRPC service, the OpenAI-compatible HTTP API, auth and tenants, metrics.

Importing this package is light; grpc, aiohttp and prometheus_client load with the server.
"""
