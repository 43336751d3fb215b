"""Side-by-side benchmarks of Strata against its peers, measured in the same run.

Run `python -m bench engine` (embedded engine against sqlite3, LevelDB and
RocksDB). Every figure is printed beside the peers' figures from the same run
and as a ratio, because absolute numbers move between machines. Results land in
`docs/bench/` as a Markdown table and a PNG chart.
"""
