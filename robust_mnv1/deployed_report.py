"""``python -m robust_mnv1.deployed_report``: the documented entry point of
:mod:`robust_mnv1.edge.deployed_report`."""

import sys

from robust_mnv1.edge.deployed_report import main

if __name__ == "__main__":
    sys.exit(main())
