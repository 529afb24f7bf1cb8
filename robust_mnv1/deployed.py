"""``python -m robust_mnv1.deployed``: the documented entry point of :mod:`robust_mnv1.edge.deployed`."""

from robust_mnv1.edge.deployed import main

if __name__ == "__main__":
    main()
