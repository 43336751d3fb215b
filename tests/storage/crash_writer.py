"""Writer process for test_crash.py: writes until killed, reporting each acknowledgement.

Prints "P <key>" after a put returns and "B <k1> <k2> <k3>" after a batch
returns, flushing stdout each time, so the parent knows exactly what was
acknowledged before it sent SIGKILL.
"""

import sys

from strata.storage import Engine


def main() -> None:
    path, start, durability = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    db = Engine.open(path, durability=durability, memtable_size=48 << 10,
                     base_level_size=192 << 10, target_file_size=48 << 10)
    out = sys.stdout
    i = start
    while True:
        key = b"k%08d" % i
        if i % 5 == 0:
            keys = [key + s for s in (b"a", b"b", b"c")]
            db.write_batch([("put", kk, b"batch-%d" % i) for kk in keys])
            out.write("B " + " ".join(kk.decode() for kk in keys) + "\n")
        else:
            db.put(key, b"v%d" % i * 8)
            out.write(f"P {key.decode()}\n")
        out.flush()
        i += 1


if __name__ == "__main__":
    main()
