"""Entry point of the compaction worker process: `python -m storage.merge_worker`."""

from storage.compaction import worker_main

if __name__ == "__main__":
    worker_main()
