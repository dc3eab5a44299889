#!/usr/bin/env bash
# Reassembles qvisor's syscall stub (qvisor/src/stub.S) into poll.rs: the STUB bytes and the
# offsets poll.rs names (slow, jump_entry, fast_body..fast_commit, fast_retreat). Run after
# editing stub.S; the test `stub_bytes_match_the_source` checks the two agree.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gcc -c "$top/qvisor/src/stub.S" -o "$tmp/stub.o"
objcopy -O binary -j .text "$tmp/stub.o" "$tmp/stub.bin"
nm "$tmp/stub.o" > "$tmp/stub.nm"
python3 - "$top/qvisor/src/poll.rs" "$tmp/stub.bin" "$tmp/stub.nm" <<'PY'
import re, sys
poll, binary, names = sys.argv[1:]
b = open(binary, 'rb').read()
sym = {l.split()[2]: int(l.split()[0], 16) for l in open(names) if len(l.split()) == 3}
rows = '\n'.join('    ' + ' '.join('0x%02x,' % x for x in b[i:i + 16]) for i in range(0, len(b), 16))
s = open(poll).read()
s = re.sub(r'pub const STUB: \[u8; \d+\] = \[\n.*?\n\];',
           'pub const STUB: [u8; %d] = [\n%s\n];' % (len(b), rows), s, flags=re.S)
for const, name in [('SLOW_RIP', 'slow'), ('JUMP_ENTRY', 'jump_entry'), ('FAST_RETREAT', 'fast_retreat')]:
    s = re.sub(r'pub const %s: u64 = STUB_VA \+ 0x[0-9a-f]+;' % const,
               'pub const %s: u64 = STUB_VA + %#x;' % (const, sym[name]), s)
s = re.sub(r'pub const FAST_BODY: std::ops::Range<u64> = STUB_VA \+ 0x[0-9a-f]+\.\.STUB_VA \+ 0x[0-9a-f]+;',
           'pub const FAST_BODY: std::ops::Range<u64> = STUB_VA + %#x..STUB_VA + %#x;'
           % (sym['fast_body'], sym['fast_commit']), s)
s = re.sub(r'//! `LSTAR` points at a \d+-byte stub', '//! `LSTAR` points at a %d-byte stub' % len(b), s)
open(poll, 'w').write(s)
print('stub: %d bytes' % len(b))
PY
