# Sourced by the shell tests (tests/web3/run.sh, tests/browser/run.sh):
# `free_port` prints a free loopback port. Needs $WORK (the test's
# temporary directory).
#
# Ports from below the kernel's ephemeral range (running nodes'
# outgoing connections take ports from that range and could steal one before
# it is bound), each handed out once: the next candidate is kept in a file.
PORT_NEXT_FILE="$WORK/next-port"
echo $((10000 + RANDOM % 20000)) > "$PORT_NEXT_FILE"
free_port() {
  python3 - "$PORT_NEXT_FILE" <<'PY'
import socket, sys
path = sys.argv[1]
low = 10000
high = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
port = int(open(path).read())
while True:
    port = low + (port - low) % (high - low)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        break
    except OSError:
        port += 1
    finally:
        s.close()
open(path, "w").write(str(port + 1))
print(port)
PY
}
