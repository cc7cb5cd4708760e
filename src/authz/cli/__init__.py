"""The `authz` command line (entry point ``authz = "authz.cli:main"``)."""

from authz.server.grpc_endpoints import prefer_posix_endpoints

prefer_posix_endpoints()  # before anything imports grpc (authz.server.grpc_endpoints)

from authz.cli.common import ExitCode  # noqa: E402
from authz.cli.main import build_parser, main  # noqa: E402

__all__ = ["ExitCode", "build_parser", "main"]
