"""``python -m robust_mnv1.export``: the documented entry point of :mod:`robust_mnv1.edge.export`."""

from robust_mnv1.edge.export import main

if __name__ == "__main__":
    main()
