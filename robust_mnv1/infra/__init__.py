"""Plumbing every part uses: errors, atomic writes, file locks, threads, the allocator, the device
and the environment a record names."""
