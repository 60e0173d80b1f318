#!/bin/busybox sh
# /init of vfmigrate's tiny test guest (busybox-static initramfs, Debian kernel).
#
# Reports on the serial console (ttyS0), one fact per line, each prefixed "VFM-GUEST: ":
#   boot kernel=<release>           first line from userspace
#   insmod-failed <module>          a module of /lib/modules/load-order did not load
#   modules <names...>              loaded modules
#   iface <name> mac=<mac> state=<operstate> driver=<driver> master=<master>
#                                   one line per interface (not lo), printed at start and
#                                   again, whole, whenever any of it changes (hot-plug, link)
#   ifaces-end                      end of such a list
#   ready                           after the NICs are up and addressed
#   tick <n>                        every second, forever (a growing log = a live guest)
# Kernel command line: vfm.ip=<addr/prefix> is put on vfm.dev=<interface> (default eth0).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

say() { echo "VFM-GUEST: $*"; }

say "boot kernel=$(uname -r)"
while read -r module; do
    insmod "/lib/modules/$module.ko" || say "insmod-failed $module"
done < /lib/modules/load-order
say "modules $(cut -d ' ' -f 1 /proc/modules | tr '\n' ' ')"

address=""
device="eth0"
for word in $(cat /proc/cmdline); do
    case "$word" in
        vfm.ip=*) address="${word#vfm.ip=}" ;;
        vfm.dev=*) device="${word#vfm.dev=}" ;;
    esac
done

bring_up() {
    for path in /sys/class/net/*; do
        name="${path##*/}"
        [ "$(cat "$path/operstate")" = "down" ] && ip link set "$name" up
    done
}

interfaces() {
    for path in /sys/class/net/*; do
        name="${path##*/}"
        [ "$name" = lo ] && continue
        driver=none
        [ -e "$path/device/driver" ] && driver="$(basename "$(readlink "$path/device/driver")")"
        master=none
        [ -e "$path/master" ] && master="$(basename "$(readlink "$path/master")")"
        echo "$name mac=$(cat "$path/address") state=$(cat "$path/operstate") driver=$driver master=$master"
    done
}

ip link set lo up
bring_up
if [ -n "$address" ]; then
    ip addr add "$address" dev "$device" || say "address-failed $address $device"
fi

reported=""
report_changes() {
    current="$(interfaces)"
    if [ "$current" != "$reported" ]; then
        echo "$current" | while read -r line; do [ -n "$line" ] && say "iface $line"; done
        say "ifaces-end"
        reported="$current"
    fi
}

report_changes
say "ready"
tick=0
while true; do
    sleep 1
    bring_up
    report_changes
    tick=$((tick + 1))
    say "tick $tick"
done
