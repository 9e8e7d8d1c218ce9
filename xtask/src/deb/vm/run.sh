#!/bin/bash
# The checks of `cargo xtask deb --test` under a real systemd as PID 1 (xtask/src/deb/vm.rs):
# run as root by the image's capsd-vm-test.service in a Debian 13 VM, with the payload disk
# (this script, the package, a test plugin) mounted at $1. Each check prints "ok NAME" or
# "FAIL NAME" followed by "| " lines saying why; "note ..." lines are information. The host
# parses this output from the VM's second serial port. Waits are on real conditions, each with
# a generous deadline (the VM may run under TCG on a loaded machine).
set -u
P=$1
SOCK=/run/capsd/capsd.sock
W=/var/tmp/vmtest
mkdir -p "$W"
export SYSTEMD_PAGER= SYSTEMD_COLORS=0

# check NAME FUNCTION: run it, its output is the reason when it fails.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        echo "ok $name"
        printf '%s\n' "$out" | grep '^note ' || true
    else
        echo "FAIL $name"
        printf '%s\n' "$out" | tail -n 25 | sed 's/^/| /'
    fi
}

# until_ok SECONDS COMMAND...: true once COMMAND succeeds, false after SECONDS without.
until_ok() {
    local end=$((SECONDS + $1))
    shift
    while ! "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 0.2
    done
}

# get PATH OUT: GET on the agent's socket, the body into OUT, the status printed.
get() { curl -sS --max-time 900 --unix-socket "$SOCK" -o "$2" -w '%{http_code}' "http://capsd$1"; }

is_active() { [ "$(systemctl is-active "$1")" = active ]; }

journal_since() { journalctl --no-pager -o cat -u capsd.service --since "@$1"; }

# Fails with the service's state and journal.
explain() {
    echo "$1"
    systemctl status --no-pager capsd.service 2>&1 | head -n 5
    journalctl --no-pager -o cat -u capsd.service | tail -n 15
    return 1
}

restart_agent() {
    systemctl restart capsd.service || explain "systemctl restart capsd.service failed" || return 1
    until_ok 900 is_active capsd.service || explain "capsd.service not active after restart"
}

c_systemd() {
    [ "$(cat /proc/1/comm)" = systemd ] || { echo "PID 1 is $(cat /proc/1/comm)"; return 1; }
    local state
    state=$(systemctl is-system-running --wait)
    echo "note system state: $state" >&2
    [ "$state" = running ] || [ "$state" = degraded ] || { echo "system is $state"; return 1; }
}

c_install() {
    dpkg -i "$P/capsd.deb" >/dev/null || return 1
    [ "$(dpkg-query -W -f '${Status}' capsd)" = "install ok installed" ]
}

c_socket() {
    systemctl enable --now capsd.socket || return 1
    is_active capsd.socket || { echo "capsd.socket is $(systemctl is-active capsd.socket)"; return 1; }
    [ -S "$SOCK" ] || { echo "no socket $SOCK"; return 1; }
    local s
    s=$(systemctl is-active capsd.service)
    [ "$s" = inactive ] || { echo "capsd.service is $s before any client"; return 1; }
}

c_first_connection() {
    local t0=$EPOCHSECONDS code
    code=$(get /healthz "$W/health") || return 1
    [ "$code" = 200 ] && [ "$(cat "$W/health")" = ok ] || { echo "/healthz: $code $(cat "$W/health")"; return 1; }
    # Type=notify: systemd says "Started" after READY=1 (and the warm-up of ExecStartPost).
    until_ok 900 is_active capsd.service || explain "capsd.service did not become active" || return 1
    until_ok 120 sh -c "journalctl --no-pager -o cat -u capsd.service --since @$t0 | grep -q 'capsd agent serving'" ||
        explain "the journal lacks capsd's 'capsd agent serving'" || return 1
    until_ok 120 sh -c "journalctl --no-pager -u capsd.service --since @$t0 | grep -q 'Started capsd.service'" ||
        explain "the journal lacks systemd's 'Started capsd.service'"
}

c_answers() {
    local e n=0 docs=0 code real msg
    for e in /usr/bin/qemu-system-*; do
        n=$((n + 1))
        code=$(get "/v1/domcapabilities?emulatorbin=$e" "$W/agent.xml") || return 1
        # The agent resolves a symlink and runs (and names in <path>) the file it leads to, as
        # the README says (Debian's qemu-system-amd64 is one): root's CLI for that file.
        real=$(readlink -f "$e")
        [ "$real" = "$e" ] || echo "note $e is a link to $real: compared with root's CLI for $real" >&2
        if ! capsd --no-cache domcapabilities --emulatorbin "$real" >"$W/cli.xml" 2>"$W/cli.err"; then
            # No document for the default query (virsh's rule: the host's arch unless asked,
            # which qemu-system-i386 does not run): the agent must refuse it the same way.
            msg=$(sed -n 's/.*"message":"\([^"]*\)".*/\1/p' "$W/agent.xml")
            if [ "$code" = 200 ] || [ -z "$msg" ] || ! grep -qF -- "$msg" "$W/cli.err"; then
                explain "$e: root's CLI failed ($(cat "$W/cli.err")) but the agent answered $code: $(head -c 600 "$W/agent.xml")"
                return 1
            fi
            echo "note $e: refused alike by the service ($code) and root's CLI: $msg" >&2
            continue
        fi
        [ "$code" = 200 ] || { explain "$e: agent answered $code: $(head -c 600 "$W/agent.xml")"; return 1; }
        # On a difference, the service's journal says what its probe met (a failed run is
        # logged there with QEMU's words).
        cmp -s "$W/agent.xml" "$W/cli.xml" || {
            diff "$W/cli.xml" "$W/agent.xml" | head -n 20
            explain "$e: the service's answer differs from root's CLI (diff above; < CLI, > service)"
            return 1
        }
        docs=$((docs + 1))
        echo "note $e: service = root's CLI ($(wc -c <"$W/cli.xml") bytes)" >&2
    done
    [ "$docs" -gt 0 ] || { echo "no document compared ($n emulators in /usr/bin)"; return 1; }
}

c_reload() {
    local pid code
    pid=$(systemctl show -P MainPID capsd.service)
    systemctl reload capsd.service || return 1
    code=$(get /healthz "$W/health") || return 1
    [ "$code" = 200 ] || { echo "/healthz after reload: $code"; return 1; }
    is_active capsd.service || explain "not active after reload" || return 1
    [ "$(systemctl show -P MainPID capsd.service)" = "$pid" ] || { echo "the main pid changed ($pid)"; return 1; }
}

# Item 4: a probe's leftovers die with it under the unit's sandbox.
c_containment() {
    local fake=/usr/local/bin/qemu-system-fake t0=$EPOCHSECONDS code left
    cat >"$fake" <<'FAKE'
#!/bin/sh
# cargo xtask deb --test: an "emulator" that leaves a process of its own behind and exits
echo ran >/var/cache/capsd/vmtest-fake-ran
setsid sleep 86411 </dev/null >/dev/null 2>&1 &
sleep 86412 </dev/null >/dev/null 2>&1 &
exit 1
FAKE
    chown root:root "$fake" && chmod 755 "$fake"
    code=$(get "/v1/domcapabilities?emulatorbin=$fake" "$W/fake.out") || return 1
    echo "note fake emulator: agent answered $code" >&2
    [ "$code" != 200 ] || { echo "a fake emulator gave a document"; return 1; }
    left=$(pgrep -a -f 'sleep 8641[12]')
    [ -f /var/cache/capsd/vmtest-fake-ran ] || { echo "the agent never ran the fake emulator (answered $code: $(cat "$W/fake.out"))"; return 1; }
    rm -f "$fake" /var/cache/capsd/vmtest-fake-ran
    pkill -f 'sleep 8641[12]'
    [ -z "$left" ] || { echo "the probe's processes outlived it (agent answered $code):"; echo "$left"; journal_since "$t0" | grep -i namespace; return 1; }
    # The warning of a fallback to process groups, at any time since the service first probed.
    if journalctl --no-pager -o cat -u capsd.service | grep -i 'cannot create a PID namespace'; then return 1; fi
}

# Item 5: the devices a probe opens are open to the service as they are to its user.
c_devices() {
    local d made=() conf=/run/systemd/system/capsd.service.d/zz-vmtest-devices.conf inside outside
    # The loop writes nothing: it opens each device write-only (what the cgroup's device filter
    # decides on; QEMU opens them read-write) as the service's user. `true`, not `:`: a failed
    # redirection of a special built-in ends a POSIX shell.
    local loop='for d in /dev/kvm /dev/sev /dev/sgx_vepc; do if [ -e $d ]; then if true 2>/dev/null >>$d; then echo "$d open"; else echo "$d refused"; fi; fi; done'
    for d in /dev/sev /dev/sgx_vepc; do
        if [ ! -e "$d" ]; then
            # This VM has no SEV or SGX: a stand-in node (/dev/kmsg's numbers, which user capsd
            # may open for writing) that the unit's DeviceAllow= must let through.
            mknod "$d" c 1 11 && chgrp kvm "$d" && chmod 660 "$d" && made+=("$d")
        fi
    done
    mkdir -p "${conf%/*}"
    printf '[Service]\nExecStartPost=/bin/sh -c %s\n' "'${loop//\$/\$\$} > /var/cache/capsd/vmtest-devices'" >"$conf"
    systemctl daemon-reload
    restart_agent
    local r=$?
    inside=$(cat /var/cache/capsd/vmtest-devices 2>&1)
    outside=$(setpriv --reuid capsd --regid capsd --init-groups sh -c "$loop" 2>&1)
    rm -f "$conf" /var/cache/capsd/vmtest-devices "${made[@]}"
    systemctl daemon-reload
    restart_agent || return 1
    [ "$r" = 0 ] || return 1
    echo "note devices as user capsd: $(echo $outside); in capsd.service: $(echo $inside)" >&2
    [ -n "$outside" ] || { echo "no device to try"; return 1; }
    [ "$inside" = "$outside" ] || { echo "in capsd.service:"; echo "$inside"; echo "as user capsd outside it:"; echo "$outside"; return 1; }
}

etcd_keys() { ETCDCTL_API=3 etcdctl --endpoints http://10.99.0.1:2379 get --prefix --keys-only "$1"; }

fleet_setup() {
    ip link add capsdt0 type dummy && ip addr add 10.99.0.1/24 dev capsdt0 && ip link set capsdt0 up || return 1
    systemd-run -q --unit=vmtest-etcd etcd --name vmtest --data-dir /var/tmp/vmtest-etcd \
        --listen-client-urls http://10.99.0.1:2379 --advertise-client-urls http://10.99.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2390 --initial-advertise-peer-urls http://127.0.0.1:2390 \
        --initial-cluster vmtest=http://127.0.0.1:2390 || return 1
    until_ok 300 env ETCDCTL_API=3 etcdctl --endpoints http://10.99.0.1:2379 endpoint health ||
        { journalctl --no-pager -o cat -u vmtest-etcd | tail; return 1; }
    printf 'CAPSD_ETCD=http://10.99.0.1:2379\nCAPSD_HOST_ID=vmtest\n' >/etc/default/capsd
}

# Item 6 without the drop-in: an etcd member off loopback is refused.
c_fleet_refused() {
    fleet_setup || return 1
    local t0=$EPOCHSECONDS
    restart_agent || return 1
    until_ok 600 sh -c "journalctl --no-pager -o cat -u capsd.service --since @$t0 | grep etcd | grep -Eq 'WARN|ERROR'" ||
        explain "no etcd failure logged" || return 1
    echo "note refused: $(journal_since "$t0" | grep etcd | grep -E 'WARN|ERROR' | head -n 1)" >&2
    [ -z "$(etcd_keys /capsd/)" ] || { echo "published without the drop-in:"; etcd_keys /capsd/; return 1; }
}

# Item 6 with the documented drop-in: published.
c_fleet_published() {
    local ex=/usr/share/doc/capsd/examples/fleet.conf d=/etc/systemd/system/capsd.service.d
    [ -f "$ex" ] || { echo "no $ex"; return 1; }
    install -D -m 644 "$ex" "$d/fleet.conf" && sed -i 's/^IPAddressAllow=.*/IPAddressAllow=10.99.0.1/' "$d/fleet.conf"
    systemctl daemon-reload
    restart_agent || return 1
    # References are P/refs/VIRTTYPE/ARCH/MACHINE/HOST (capsd-fleet's layout); the host record P/hosts/HOST.
    until_ok 900 sh -c "ETCDCTL_API=3 etcdctl --endpoints http://10.99.0.1:2379 get --prefix --keys-only /capsd/refs/ | grep -q '/vmtest\$'" ||
        explain "no reference of host vmtest under /capsd/refs/ within 900 s" || return 1
    [ -n "$(etcd_keys /capsd/hosts/vmtest)" ] || { echo "no host record /capsd/hosts/vmtest"; return 1; }
    echo "note published: $(etcd_keys /capsd/refs/ | grep -c '/vmtest$') references of host vmtest" >&2
    rm -f /etc/default/capsd "$d/fleet.conf"
    systemctl daemon-reload
    restart_agent
}

# A plugin whose constructor crashes does not stop the service.
c_plugin() {
    local code r=0
    install -m 644 "$P/libvmtest_crash.so" /usr/lib/capsd/plugins/libvmtest_crash.so
    # restart returns once the start job is done: READY=1 and the warm-up, or a failure.
    systemctl restart capsd.service || { explain "systemctl restart failed with the plugin installed"; r=1; }
    if [ "$r" = 0 ]; then
        is_active capsd.service || { explain "capsd.service is $(systemctl is-active capsd.service) with the plugin"; r=1; }
    fi
    if [ "$r" = 0 ]; then
        [ "$(systemctl show -P NRestarts capsd.service)" = 0 ] || { explain "restarted $(systemctl show -P NRestarts capsd.service) times"; r=1; }
        code=$(get /v1/domcapabilities "$W/p.xml")
        [ "$code" = 200 ] || { echo "a QEMU query answered $code"; r=1; }
        code=$(get /v1/drivers "$W/drivers.json")
        grep -q vmtest_crash "$W/drivers.json" || { echo "/v1/drivers ($code) does not name the plugin: $(head -c 600 "$W/drivers.json")"; r=1; }
    fi
    rm -f /usr/lib/capsd/plugins/libvmtest_crash.so
    systemctl reset-failed capsd.service
    restart_agent || return 1
    return $r
}

probe_running() { pgrep -u capsd -f qemu-system- >/dev/null; }

c_stop() {
    # A probe in flight: the cache emptied, the agent restarted and asked for a document.
    systemctl stop capsd.service
    rm -rf /var/cache/capsd/*
    systemctl start --no-block capsd.service
    curl -sS --max-time 900 --unix-socket "$SOCK" -o /dev/null "http://capsd/v1/domcapabilities?emulatorbin=/usr/bin/qemu-system-x86_64" &
    local curl=$!
    until_ok 600 probe_running || { echo "no QEMU probe of user capsd seen running"; return 1; }
    systemctl stop capsd.service capsd.socket
    wait "$curl"
    local left dirs
    left=$(pgrep -a -u capsd)
    dirs=$(find /tmp /var/tmp /run /var/cache/capsd -name 'capsd-probe-*' 2>/dev/null)
    [ -z "$left$dirs" ] || { echo "left after systemctl stop:"; echo "$left"; echo "$dirs"; return 1; }
}

echo "note kernel $(uname -r), $(systemctl --version | head -n 1), $(qemu-system-x86_64 --version | head -n 1)"
check "systemd is PID 1 and the system is up" c_systemd
check "dpkg -i capsd.deb" c_install || true
if dpkg-query -W capsd >/dev/null 2>&1; then
    check "systemctl enable --now capsd.socket (service not started yet)" c_socket
    check "the first connection starts capsd.service; the journal shows it ready" c_first_connection
    check "the service answers what root's CLI answers, for each emulator" c_answers
    check "systemctl reload keeps serving" c_reload
    check "a double-forking fake emulator leaves no process behind (RestrictNamespaces)" c_containment
    check "/dev/sev and /dev/sgx_vepc open in the service as for its user (DeviceAllow)" c_devices
    check "fleet: an etcd member off loopback is refused without the drop-in (IPAddressDeny)" c_fleet_refused
    check "fleet: with the documented drop-in the service publishes to it" c_fleet_published
    check "a plugin whose constructor crashes does not stop the service" c_plugin
    check "systemctl stop leaves no QEMU and no probe directory" c_stop
fi
echo "end of checks"
