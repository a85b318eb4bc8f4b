#!/usr/bin/env python3
"""Proves that the CUDA code compiled for the architectures we ship.

Scans a static library (or object) for NVIDIA fat binary containers
(magic 0xBA55ED50), walks their entries (kind 1 = PTX, 2 = ELF/SASS; the SM
architecture is the u32 at offset 28 of an entry header) and checks that every
required architecture is present in every container: SASS for sm_80 and sm_90
and PTX for compute_90 (CMAKE_CUDA_ARCHITECTURES "80-real;90-real;90-virtual").
No cuobjdump needed: this machine's CUDA install lacks it.

usage: check_fatbin.py LIB [--sass 80,90] [--ptx 90] [--min-containers N]
exit 0 when everything is there, 1 otherwise (with the reason on stderr).
"""
import struct
import sys

MAGIC = 0xBA55ED50


def containers(data):
    pos = 0
    while True:
        pos = data.find(struct.pack("<I", MAGIC), pos)
        if pos < 0:
            return
        if pos + 16 > len(data):
            return
        _, version, hsize, fat_size = struct.unpack_from("<IHHQ", data, pos)
        if version != 1 or hsize != 16 or pos + 16 + fat_size > len(data):
            pos += 4
            continue
        entries = []
        e, end = pos + hsize, pos + hsize + fat_size
        while e + 32 <= end:
            kind, _, ehsize, size = struct.unpack_from("<HHIQ", data, e)
            arch = struct.unpack_from("<I", data, e + 28)[0]
            if ehsize < 32 or kind not in (1, 2):
                break
            entries.append((kind, arch))
            e += ehsize + size
        yield pos, entries
        pos = end


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    path = args[0]
    sass, ptx, min_cont = {80, 90}, {90}, 1
    i = 1
    while i < len(args):
        if args[i] == "--sass":
            sass = {int(x) for x in args[i + 1].split(",") if x}
        elif args[i] == "--ptx":
            ptx = {int(x) for x in args[i + 1].split(",") if x}
        elif args[i] == "--min-containers":
            min_cont = int(args[i + 1])
        else:
            print("unknown argument " + args[i], file=sys.stderr)
            return 2
        i += 2
    with open(path, "rb") as f:
        data = f.read()
    found = list(containers(data))
    if len(found) < min_cont:
        print("%s: %d fat binary containers, expected at least %d (CUDA objects missing?)" % (path, len(found), min_cont),
              file=sys.stderr)
        return 1
    bad = 0
    for pos, entries in found:
        have_sass = {a for k, a in entries if k == 2}
        have_ptx = {a for k, a in entries if k == 1}
        miss = ["sm_%d" % a for a in sorted(sass - have_sass)] + ["compute_%d" % a for a in sorted(ptx - have_ptx)]
        print("container @%d: SASS %s, PTX %s%s" % (pos, sorted(have_sass), sorted(have_ptx),
                                                    ("  MISSING " + ", ".join(miss)) if miss else ""))
        bad += bool(miss)
    if bad:
        print("%d of %d containers lack a required architecture" % (bad, len(found)), file=sys.stderr)
        return 1
    print("%d containers, all with SASS %s and PTX %s" % (len(found), sorted(sass), sorted(ptx)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
