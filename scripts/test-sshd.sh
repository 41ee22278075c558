#!/usr/bin/env bash
# An OpenSSH server for the tests: loopback only, port 2222, key-only, with host and client
# keys made for this run in DIR. Prints the ssh_config to use (Host offload-test, and
# offload-test-2: the same server on 127.0.0.2, a second loopback address, as a second host).
#   scripts/test-sshd.sh start DIR     start it (needs openssh-server and openssh-client)
#   scripts/test-sshd.sh stop DIR      stop it, by the pid it recorded
set -euo pipefail
command=$1
dir=$2
case "$command" in
start)
    mkdir -p "$dir" /run/sshd
    chmod 700 "$dir"
    rm -f "$dir"/host_key* "$dir"/client_key*
    ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$dir/client_key"
    cp "$dir/client_key.pub" "$dir/authorized_keys"
    cat > "$dir/sshd_config" <<CONFIG
ListenAddress 127.0.0.1
ListenAddress 127.0.0.2
Port 2222
HostKey $dir/host_key
AuthorizedKeysFile $dir/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
MaxStartups 200:30:400
MaxSessions 200
PidFile $dir/sshd.pid
CONFIG
    echo "[127.0.0.1]:2222,[127.0.0.2]:2222 $(cut -d' ' -f1,2 "$dir/host_key.pub")" > "$dir/known_hosts"
    cat > "$dir/ssh_config" <<CONFIG
Host offload-test-2
    HostName 127.0.0.2
Host offload-test
    HostName 127.0.0.1
Host offload-test offload-test-2
    Port 2222
    User $(id -un)
    IdentityFile $dir/client_key
    IdentitiesOnly yes
    UserKnownHostsFile $dir/known_hosts
    StrictHostKeyChecking yes
    LogLevel ERROR
CONFIG
    /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
    for _ in $(seq 100); do
        if ssh -F "$dir/ssh_config" -o BatchMode=yes offload-test true 2>/dev/null; then
            echo "$dir/ssh_config"
            exit 0
        fi
        sleep 0.1
    done
    echo "sshd did not accept a login; its log:" >&2
    cat "$dir/sshd.log" >&2
    exit 1
    ;;
stop)
    if [ -f "$dir/sshd.pid" ]; then
        kill "$(cat "$dir/sshd.pid")" 2>/dev/null || true
        rm -f "$dir/sshd.pid"
    fi
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
