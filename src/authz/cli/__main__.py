"""`python -m authz.cli ...`, the same as the `authz` script."""

import sys

from authz.cli.main import main

sys.exit(main())
