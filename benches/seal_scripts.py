#!/usr/bin/env python3
"""Redis's own cost of the room scripts per relayed message, without HTTP: two scripts trees
(`OLD` and `NEW`, directories holding room.lua, join.lua, send.lua, read.lua, open.lua) run
alternately on one redis-server, each as 30,000 targeted 100-byte sends, each followed by the
reader's read with its acknowledgement (`stream`) or by a poll's open and read (`poll`),
pipelined through `redis-cli --pipe`; Redis's `INFO commandstats` gives the time inside the
scripts (EVALSHA µs) per message. Written for the seal (issue 18, docs/BENCHMARKS.md).

    python3 benches/seal_scripts.py OLD_DIR NEW_DIR [PORT] [ROUNDS]

e.g. OLD_DIR from `git archive <commit> src/store/redis/lua | tar -x -C /tmp/old`. It starts
and stops its own redis-server on PORT (default 16391)."""
import hashlib
import subprocess
import sys
import time

N = 30000
KEYS = ['b:{r}:peers', 'b:{b:global}:held']


def resp(*args):
    out = [b'*%d\r\n' % len(args)]
    for arg in args:
        arg = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b'$%d\r\n%s\r\n' % (len(arg), arg))
    return b''.join(out)


def commands(tree, mode):
    """The whole run as RESP: load the scripts, join alice and bob, then N messages."""
    sha, out = {}, [resp('FLUSHALL')]
    room = open(f'{tree}/room.lua', 'rb').read()
    for name in ['join', 'send', 'read', 'open']:
        script = room + open(f'{tree}/{name}.lua', 'rb').read()
        sha[name] = hashlib.sha1(script).hexdigest()
        out.append(resp('SCRIPT', 'LOAD', script))
    announcement = 'join {"type":"join","data":{"peer_id":"x"}}'
    for peer in ['alice', 'bob']:
        out.append(resp('EVALSHA', sha['join'], 2, *KEYS, peer, 'd' + peer, '127.0.0.1', '{}',
                        announcement, 16, 1024, 400, 30000, 90000, 1 << 20))
    message = 'offer  "data":{"pad":"' + 'x' * 60 + '"}}'
    for k in range(1, N + 1):
        # Rate 1e9: the bucket never runs dry, as in a relay within the limits.
        out.append(resp('EVALSHA', sha['send'], 2, *KEYS, 'dbob', 1024, 1e9, 400, 90000,
                        1 << 20, 1 << 30, 1 << 31, 'alice', message))
        if mode == 'poll':
            out.append(resp('EVALSHA', sha['open'], 2, *KEYS, 'alice', k, 256, 262144, 'poll'))
            out.append(resp('EVALSHA', sha['read'], 2, *KEYS, 'alice', k, '', '', 256, 256,
                            262144, 262144, str(k)))
        else:
            out.append(resp('EVALSHA', sha['read'], 2, *KEYS, 'alice', k, k, '', 256, 256,
                            262144, 262144, ''))
    return b''.join(out)


def cli(port, *args, stdin=None):
    return subprocess.run(['redis-cli', '-p', str(port), *args], input=stdin,
                          capture_output=True, check=True).stdout.decode()


def main():
    old, new = sys.argv[1], sys.argv[2]
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 16391
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    server = subprocess.Popen(['redis-server', '--port', str(port), '--bind', '127.0.0.1',
                               '--save', '', '--appendonly', 'no'],
                              stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        runs = {(label, mode): commands(tree, mode)
                for label, tree in [('old', old), ('new', new)] for mode in ['stream', 'poll']}
        for _ in range(rounds):
            for (label, mode), run in runs.items():
                cli(port, 'CONFIG', 'RESETSTAT')
                piped = cli(port, '--pipe', stdin=run)
                assert 'errors: 0' in piped, piped
                stats = cli(port, 'INFO', 'commandstats')
                usec = int(stats.split('cmdstat_evalsha:calls=')[1].split('usec=')[1].split(',')[0])
                print(f'{mode} {label}: {usec / N:.2f} us of scripts per message', flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == '__main__':
    main()
