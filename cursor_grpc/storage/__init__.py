"""Storage: one writer thread owns the only write connection; reads run on
a pool of read-only connections. Services reach it only through `Store`."""
