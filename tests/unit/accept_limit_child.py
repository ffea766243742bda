"""Child process of test_accept_backoff: an AcceptLoop on uvloop that runs out of
descriptors on purpose.

Prints JSON lines on stdout: ``{"port": n}`` once listening, ``{"full": n}`` once the
descriptor table is full (n descriptors held), ``{"freed": n}`` after the parent wrote
``free`` on stdin, ``{"served": sha256}`` for each connection served (it reads a 64-byte
message and answers its SHA-256). Logging goes to stderr, one line per record.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import resource
import socket
import sys

import uvloop

from relay.accepting import AcceptLoop

MESSAGE_SIZE = 64


def say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def serve(conn: socket.socket, address: object) -> None:
    # The parent sent its message before we could accept: it is in the socket already.
    conn.setblocking(True)
    conn.settimeout(5)
    data = b""
    while len(data) < MESSAGE_SIZE:
        chunk = conn.recv(MESSAGE_SIZE - len(data))
        if not chunk:
            break
        data += chunk
    digest = hashlib.sha256(data).hexdigest()
    conn.sendall(digest.encode())
    conn.close()
    say(served=digest)


async def main() -> None:
    loop = asyncio.get_running_loop()
    sock = socket.create_server(("127.0.0.1", 0), backlog=16)
    acceptor = AcceptLoop(loop, sock, serve, what="test port")
    held: list[int] = []
    done = loop.create_future()

    def command() -> None:
        line = os.read(sys.stdin.fileno(), 100)
        if line.startswith(b"free"):
            for fd in held:
                os.close(fd)
            say(freed=len(held))
            held.clear()
        else:  # "quit" or EOF
            loop.remove_reader(sys.stdin.fileno())
            if not done.done():
                done.set_result(None)

    loop.add_reader(sys.stdin.fileno(), command)
    say(port=sock.getsockname()[1])
    # Lower the limit to a little above what is open now, then take every slot left.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 16, hard))
    while True:
        try:
            held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            break
    say(full=len(held))
    await done
    acceptor.close()
    sock.close()


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")
    uvloop.run(main())
