"""The medrt.v1 gRPC contract: ``from medrt.v1 import medrt_pb2, medrt_pb2_grpc``.

The modules are generated from proto/medrt/v1/medrt.proto on first import (see
medrt.serve.protogen); this package only points its search path at them, so the generated
``from medrt.v1 import medrt_pb2`` inside medrt_pb2_grpc resolves here.
"""

from medrt.serve.protogen import generated_dir

__path__.append(str(generated_dir() / "medrt" / "v1"))
