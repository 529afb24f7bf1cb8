"""``python -m robust_mnv1.transfer``: the documented entry point of :mod:`robust_mnv1.edge.transfer`."""

from robust_mnv1.edge.transfer import main

if __name__ == "__main__":
    main()
