"""The `authz` command line (entry point ``authz = "authz.cli:main"``)."""

from authz.cli.common import ExitCode
from authz.cli.main import build_parser, main

__all__ = ["ExitCode", "build_parser", "main"]
