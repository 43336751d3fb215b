"""Entry point of the compaction worker process: `python -m strata.storage.merge_worker`."""

from strata.storage.compaction import worker_main

if __name__ == "__main__":
    worker_main()
