"""Python in the guest: threads, sockets, a stream, a child process, a thread pool, SQLite.

Prints the same lines on Linux and in Quark; the test compares them.
"""
import concurrent.futures
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

# An echo server thread per connection, four clients at once.
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 8099))
srv.listen(8)


def echo(conn):
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data.upper())


def serve():
    for _ in range(4):
        conn, _ = srv.accept()
        threading.Thread(target=echo, args=(conn,)).start()


threading.Thread(target=serve, daemon=True).start()
replies = []
lock = threading.Lock()


def client(i):
    with socket.create_connection(("127.0.0.1", 8099)) as s:
        s.sendall(f"hello {i}".encode())
        reply = s.recv(100).decode()
        with lock:
            replies.append(reply)


clients = [threading.Thread(target=client, args=(i,)) for i in range(4)]
for t in clients:
    t.start()
for t in clients:
    t.join()
print("echo:", sorted(replies))

# A 32 MiB stream between two threads, received with recv (Quark's syscall stub serves such
# reads from the socket's ring once the stream is going).
stream_srv = socket.socket()
stream_srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
stream_srv.bind(("127.0.0.1", 8098))
stream_srv.listen(1)


def stream_out():
    conn, _ = stream_srv.accept()
    with conn:
        block = bytes(range(256)) * 4096
        for i in range(32):
            conn.sendall(bytes([i]) + block[1:])


threading.Thread(target=stream_out).start()
digest = hashlib.sha256()
total = 0
with socket.create_connection(("127.0.0.1", 8098)) as s:
    while data := s.recv(65536):
        digest.update(data)
        total += len(data)
print("stream:", total, digest.hexdigest()[:16])

out = subprocess.run(["/bin/echo", "from a child"], capture_output=True, text=True)
print("subprocess:", out.returncode, out.stdout.strip())

# Sleeping threads park apart: every sleep starts before any ends. Judged by the intervals,
# not by a deadline, so a loaded machine cannot make it fail.
intervals = []


def sleeper():
    begin = time.monotonic()
    time.sleep(0.5)
    intervals.append((begin, time.monotonic()))


sleepers = [threading.Thread(target=sleeper) for _ in range(4)]
for t in sleepers:
    t.start()
for t in sleepers:
    t.join()
print("sleeps overlap:", max(b for b, _ in intervals) < min(e for _, e in intervals))

with concurrent.futures.ThreadPoolExecutor(4) as pool:
    digests = list(pool.map(lambda i: hashlib.sha256(str(i).encode()).hexdigest()[:8], range(8)))
print("pool:", json.dumps(digests))

# SQLite between two processes: its file locks keep a writer out while another holds the
# database (fcntl record locks), and let it in after the commit.
db = os.path.join(tempfile.mkdtemp(), "t.db")
con = sqlite3.connect(db, isolation_level=None)
con.execute("create table t(x)")
con.execute("begin exclusive")
writer = [
    sys.executable,
    "-c",
    "import sqlite3, sys\n"
    "try:\n"
    "    c = sqlite3.connect(sys.argv[1], timeout=0)\n"
    "    c.execute('insert into t values (1)')\n"
    "    c.commit()\n"
    "    print('written')\n"
    "except sqlite3.OperationalError as e:\n"
    "    print(e)\n",
    db,
]
print("sqlite while locked:", subprocess.run(writer, capture_output=True, text=True).stdout.strip())
con.execute("commit")
print("sqlite after commit:", subprocess.run(writer, capture_output=True, text=True).stdout.strip())
print("sqlite rows:", con.execute("select count(*) from t").fetchone()[0])
