# ruff: noqa: E501  (kernel table rows are long; kept verbatim)
"""Fixture text copied from a real x86-64 Linux 6.x machine (little-endian)."""

from __future__ import annotations

__all__ = [
    "MEMINFO",
    "NETSTAT",
    "SERVICES",
    "SLABINFO",
    "SOCKSTAT",
    "TCP",
    "TCP6",
    "UDP",
    "UNIX",
]

# A listener on 127.0.0.1:7007 (0x1B5F) with one accepted connection from port 37020
# (0x909C), one connection still in the accept queue (server end inode 0) from port
# 37022 (0x909E), a TIME_WAIT left by a client that closed first, and a listener on
# 0.0.0.0:2024 with nothing connected.
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1B5F 00000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 624 1 0000000000000000 100 0 0 10 0
   2: 0100007F:909C 0100007F:1B5F 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1B5F 0100007F:909C 01 00000005:00000003 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
   4: 0100007F:909E 0100007F:1B5F 01 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 20 4 30 10 -1
   5: 0100007F:1B5F 0100007F:909E 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1
   6: 0100007F:9D1E 0100007F:1B5F 06 00000000:00000000 03:0000079A 00000000     0        0 0 3 0000000000000000
"""

# A dual-stack listener on [::]:8080 (0x1F90) with an IPv4 client seen as
# ::ffff:127.0.0.1, and an IPv6 loopback connection [::1]:50000 <-> [::1]:8080.
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 20 4 30 10 -1
   2: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:C350 01 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 20 4 30 10 -1
   3: 00000000000000000000000001000000:C350 00000000000000000000000001000000:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2004 1 0000000000000000 20 4 30 10 -1
"""

# The IPv4 client of the dual-stack listener above: 127.0.0.1:40960 -> 127.0.0.1:8080.
TCP_V4_CLIENT = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A000 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2005 1 0000000000000000 20 4 30 10 -1
"""

UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 2815: 0100007F:A607 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 18934 2 00000000ef8faa5d 0
 5357: 0100007F:AFF5 0100007F:0035 01 00000000:00000200 00:00000000 00000000     0        0 13001 2 00000000b7d03ca2 3
"""

UNIX = """\
Num       RefCount Protocol Flags    Type St Inode Path
00000000bdac47dc: 00000002 00000000 00010000 0001 01  4520 /var/run/postgresql/.s.PGSQL.5432
00000000a681272c: 00000003 00000000 00000000 0001 03 13007
000000008c491a87: 00000003 00000000 00000000 0002 01 13006 @abstract name
"""

NETSTAT = """\
TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPHPHits
TcpExt: 0 0 12 14 6272
IpExt: InNoRoutes InOctets OutOctets
IpExt: 0 817881127 639045553
"""

SOCKSTAT = """\
sockets: used 36
TCP: inuse 13 orphan 0 tw 2 alloc 16 mem 132
UDP: inuse 2 mem 0
UDPLITE: inuse 0
RAW: inuse 0
FRAG: inuse 0 memory 0
"""

MEMINFO = """\
MemTotal:       24684016 kB
MemFree:        24090112 kB
MemAvailable:   24087552 kB
Slab:              71234 kB
HugePages_Total:       0
"""

SLABINFO = """\
slabinfo - version: 2.1
# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>
tw_sock_TCP          224    304    256   16    1 : tunables    0    0    0 : slabdata     19     19      0
TCP                  133    182   2368   13    8 : tunables    0    0    0 : slabdata     14     14      0
sock_inode_cache     173    247    832   19    4 : tunables    0    0    0 : slabdata     13     13      0
"""

SERVICES = """\
# Network services, Internet style
tcpmux		1/tcp				# TCP port service multiplexer
echo		7/tcp
echo		7/udp
http		80/tcp		www		# WorldWideWeb HTTP
https		443/tcp
afs3-bos	7007/udp			# basic overseer process
broken line
ssh		22/tcp
"""
