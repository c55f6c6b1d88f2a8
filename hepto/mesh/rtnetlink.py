"""A small rtnetlink client: the links, addresses and routes the mesh reads and sets.

The mesh needs a dozen kinds of requests (see :mod:`hepto.mesh.links`); pyroute2 covers
every netlink family and costs the agent about 8 MiB of RSS to import, so the userspace
backend, which is what most hosts run, uses this module instead (``docs/memory.rst``).
pyroute2 is imported only for the kernel's WireGuard (:mod:`hepto.mesh.kernel`).

Two halves, so that the formats can be tested without a kernel:

- pure functions that encode requests (:func:`request`, :func:`link_request`, ...) and
  decode answers (:func:`split`, :func:`parse_link`, ...), bytes in and bytes out;
- :class:`RtNetlink`, the I/O: one ``NETLINK_ROUTE`` socket, a request and its answer at
  a time, blocking with a timeout.  The kernel answers a request in the ``send`` itself
  (a dump as it is read), locally, in tens of microseconds: simpler and cheaper than a
  non-blocking protocol on the reactor, for one request per change.

Errors are :class:`NetlinkError`, an :class:`OSError` with the errno, the request and the
kernel's own explanation (extended acks) when it gives one.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from typing import Final, Protocol

import attrs

from hepto import plan

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Netlink (linux/netlink.h)
NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLM_F_REQUEST: Final = 0x1
NLM_F_MULTI: Final = 0x2
NLM_F_ACK: Final = 0x4
NLM_F_DUMP: Final = 0x300
NLM_F_EXCL: Final = 0x200
NLM_F_CREATE: Final = 0x400
#: In an error message: the request is not echoed / extended-ack attributes follow.
NLM_F_CAPPED: Final = 0x100
NLM_F_ACK_TLVS: Final = 0x200
NLMSGERR_ATTR_MSG: Final = 1
SOL_NETLINK: Final = 270
NETLINK_CAP_ACK: Final = 10
NETLINK_EXT_ACK: Final = 11
NLA_TYPE_MASK: Final = 0x3FFF

# rtnetlink (linux/rtnetlink.h, if_link.h, if_addr.h)
RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
RTM_GETLINK: Final = 18
RTM_NEWADDR: Final = 20
RTM_DELADDR: Final = 21
RTM_GETADDR: Final = 22
RTM_NEWROUTE: Final = 24
RTM_DELROUTE: Final = 25
RTM_GETROUTE: Final = 26
IFLA_IFNAME: Final = 3
IFLA_MTU: Final = 4
IFLA_LINKINFO: Final = 18
IFLA_INFO_KIND: Final = 1
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2
IFA_FLAGS: Final = 8
RTA_DST: Final = 1
RTA_OIF: Final = 4
RTA_TABLE: Final = 15
IFF_UP: Final = 0x1
RT_SCOPE_UNIVERSE: Final = 0
RTN_UNICAST: Final = 1
#: Routes the kernel makes itself (for our own addresses); never ours to remove.
RTPROT_KERNEL: Final = 2
#: How hepto's routes show in ``ip -6 route``: ``proto static``.
RTPROT_STATIC: Final = 4
MAIN_TABLE: Final = 254

_HEADER: Final = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, port
_ATTRIBUTE: Final = struct.Struct("=HH")  # nlattr: length, type
_IFINFOMSG: Final = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG: Final = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG: Final = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table,
# protocol, scope, type, flags
_U32: Final = struct.Struct("=I")
_ERROR: Final = struct.Struct("=i")

_NAMES: Final = {
    RTM_NEWLINK: "RTM_NEWLINK",
    RTM_DELLINK: "RTM_DELLINK",
    RTM_GETLINK: "RTM_GETLINK",
    RTM_NEWADDR: "RTM_NEWADDR",
    RTM_DELADDR: "RTM_DELADDR",
    RTM_GETADDR: "RTM_GETADDR",
    RTM_NEWROUTE: "RTM_NEWROUTE",
    RTM_DELROUTE: "RTM_DELROUTE",
    RTM_GETROUTE: "RTM_GETROUTE",
}


class NetlinkError(OSError):
    """The kernel refused a request: ``errno`` says why, the message says which request."""


class NetlinkProtocolError(Exception):
    """An answer that is not netlink as this module knows it (truncated, out of order)."""


@attrs.frozen
class Message:
    type: int
    flags: int
    seq: int
    body: bytes


@attrs.frozen
class Link:
    index: int
    name: str
    mtu: int | None
    flags: int
    #: ``IFLA_INFO_KIND``: ``wireguard``, ``veth``...; None for a plain device.
    kind: str | None = None

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


@attrs.frozen
class Address:
    index: int
    address: IPAddress
    prefixlen: int
    #: ``IFA_F_*``: the 32-bit ``IFA_FLAGS`` attribute when present, else the header's.
    flags: int
    scope: int


@attrs.frozen
class Route:
    destination: IPNetwork
    #: The output interface's index; None for a route without one (multipath...).
    oif: int | None
    table: int
    protocol: int
    type: int


# Encoding


def attribute(kind: int, value: bytes) -> bytes:
    """One ``nlattr``, padded to four bytes."""
    length = _ATTRIBUTE.size + len(value)
    return _ATTRIBUTE.pack(length, kind) + value + b"\0" * (-length % 4)


def request(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """A netlink message: header and body (port 0: the kernel fills in ours)."""
    return _HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body


def _name(name: str) -> bytes:
    return attribute(IFLA_IFNAME, name.encode() + b"\0")


def link_request(
    *,
    index: int = 0,
    name: str | None = None,
    mtu: int | None = None,
    up: bool | None = None,
    kind: str | None = None,
) -> bytes:
    """An ``ifinfomsg`` with attributes: a link by index or name, what to set or create."""
    flags = change = 0
    if up is not None:
        flags, change = (IFF_UP if up else 0), IFF_UP
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)
    if name is not None:
        body += _name(name)
    if mtu is not None:
        body += attribute(IFLA_MTU, _U32.pack(mtu))
    if kind is not None:
        body += attribute(IFLA_LINKINFO, attribute(IFLA_INFO_KIND, kind.encode()))
    return body


def _family(address: IPAddress) -> int:
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


def address_request(
    index: int, address: IPAddress, prefixlen: int, flags: int = 0, scope: int = 0
) -> bytes:
    """An ``ifaddrmsg`` for adding or removing ``address/prefixlen`` on link ``index``."""
    body = _IFADDRMSG.pack(_family(address), prefixlen, flags & 0xFF, scope, index)
    body += attribute(IFA_LOCAL, address.packed) + attribute(IFA_ADDRESS, address.packed)
    if flags > 0xFF:
        body += attribute(IFA_FLAGS, _U32.pack(flags))
    return body


def route_request(
    destination: IPNetwork,
    oif: int,
    table: int = MAIN_TABLE,
    protocol: int = RTPROT_STATIC,
) -> bytes:
    """An ``rtmsg`` for a unicast route to ``destination`` through link ``oif``."""
    family = _family(destination.network_address)
    table_field = table if table < 256 else 0  # RT_TABLE_UNSPEC: RTA_TABLE says it
    body = _RTMSG.pack(
        family,
        destination.prefixlen,
        0,
        0,
        table_field,
        protocol,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
        0,
    )
    if destination.prefixlen:
        body += attribute(RTA_DST, destination.network_address.packed)
    return body + attribute(RTA_OIF, _U32.pack(oif)) + attribute(RTA_TABLE, _U32.pack(table))


def dump_request(family: int, header: struct.Struct) -> bytes:
    """The body of a dump request: ``header`` all zero but for the address family."""
    return bytes([family]) + bytes(header.size - 1)


# Decoding


def split(data: bytes) -> Iterator[Message]:
    """The messages of one datagram."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, flags, seq, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            raise NetlinkProtocolError(f"truncated netlink message ({length} bytes)")
        yield Message(kind, flags, seq, data[offset + _HEADER.size : offset + length])
        offset += (length + 3) & ~3


def attributes(data: bytes) -> dict[int, bytes]:
    """The attributes in ``data``, by type (nesting and byte-order flags masked off)."""
    found = {}
    offset = 0
    while offset + _ATTRIBUTE.size <= len(data):
        length, kind = _ATTRIBUTE.unpack_from(data, offset)
        if length < _ATTRIBUTE.size:
            break
        found[kind & NLA_TYPE_MASK] = data[offset + _ATTRIBUTE.size : offset + length]
        offset += (length + 3) & ~3
    return found


def _string(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode(errors="replace")


def _u32(value: bytes | None) -> int | None:
    return None if value is None or len(value) < 4 else int(_U32.unpack_from(value)[0])


# The mesh's resync dumps every route and address of its namespace every 10 s, and the
# same come back each time (a hundred pod prefixes at 100 members): what each one's
# bytes make is remembered, errors never (lru_cache keeps only what a call returns).
@functools.lru_cache(maxsize=plan.ADDRESS_CACHE)
def _ip(value: bytes) -> IPAddress:
    return ipaddress.ip_address(value)


@functools.lru_cache(maxsize=plan.ADDRESS_CACHE)
def _destination(family: int, value: bytes | None, length: int) -> IPNetwork:
    if value is not None:
        network = _ip(value)
    else:  # a default route
        network = ipaddress.IPv4Address(0) if family == socket.AF_INET else ipaddress.IPv6Address(0)
    return ipaddress.ip_network((network, length))


def parse_link(body: bytes) -> Link:
    _, _, index, flags, _ = _IFINFOMSG.unpack_from(body)
    found = attributes(body[_IFINFOMSG.size :])
    kind = None
    if IFLA_LINKINFO in found:
        info = attributes(found[IFLA_LINKINFO])
        if IFLA_INFO_KIND in info:
            kind = _string(info[IFLA_INFO_KIND])
    return Link(index, _string(found.get(IFLA_IFNAME, b"")), _u32(found.get(IFLA_MTU)), flags, kind)


def parse_address(body: bytes) -> Address | None:
    """An address from an ``RTM_NEWADDR``; None if it carries none."""
    _, prefixlen, flags, scope, index = _IFADDRMSG.unpack_from(body)
    found = attributes(body[_IFADDRMSG.size :])
    # IFA_LOCAL is the address itself where it differs from IFA_ADDRESS (the peer's).
    value = found.get(IFA_LOCAL, found.get(IFA_ADDRESS))
    if value is None:
        return None
    wide = _u32(found.get(IFA_FLAGS))
    return Address(index, _ip(value), prefixlen, flags if wide is None else wide, scope)


def parse_route(body: bytes) -> Route:
    family, dst_len, _, _, table, protocol, _, kind, _ = _RTMSG.unpack_from(body)
    found = attributes(body[_RTMSG.size :])
    destination = _destination(family, found.get(RTA_DST), dst_len)
    wide_table = _u32(found.get(RTA_TABLE))
    return Route(
        destination,
        _u32(found.get(RTA_OIF)),
        table if wide_table is None else wide_table,
        protocol,
        kind,
    )


def parse_error(message: Message) -> tuple[int, str | None]:
    """An ``NLMSG_ERROR``: the errno (0 for an ack) and the kernel's text, if any."""
    (code,) = _ERROR.unpack_from(message.body)
    text = None
    if message.flags & NLM_F_ACK_TLVS:
        # After the error: the request's header (capped) or the whole request.
        if message.flags & NLM_F_CAPPED:
            skip = _ERROR.size + _HEADER.size
        else:
            (length,) = struct.unpack_from("=I", message.body, _ERROR.size)
            skip = _ERROR.size + ((length + 3) & ~3)
        found = attributes(message.body[skip:])
        if NLMSGERR_ATTR_MSG in found:
            text = _string(found[NLMSGERR_ATTR_MSG])
    return -code, text


# I/O


class Netlink(Protocol):
    """What the mesh asks of rtnetlink: :class:`RtNetlink`, or a fake for tests."""

    def link(self, name: str) -> Link | None: ...
    def link_by_index(self, index: int) -> Link | None: ...
    def set_link(self, index: int, *, mtu: int | None = None, up: bool | None = None) -> None: ...
    def add_link(self, name: str, kind: str) -> None: ...
    def delete_link(self, index: int) -> None: ...
    def get_addresses(
        self, family: int = socket.AF_INET6, index: int | None = None
    ) -> list[Address]: ...
    def add_address(
        self, index: int, address: IPAddress, prefixlen: int, flags: int = 0
    ) -> None: ...
    def delete_address(self, index: int, address: IPAddress, prefixlen: int) -> None: ...
    def get_routes(self, family: int = socket.AF_INET6) -> list[Route]: ...
    def add_route(self, destination: IPNetwork, oif: int, table: int = MAIN_TABLE) -> None: ...
    def delete_route(self, destination: IPNetwork, oif: int, table: int = MAIN_TABLE) -> None: ...
    def close(self) -> None: ...


class RtNetlink:
    """A ``NETLINK_ROUTE`` socket and the requests the mesh makes over it.

    ``sock`` may be given (one opened in another network namespace, for tests); by
    default one is opened in the process's own namespace.  No multicast groups: unread
    notifications would pile up and end in ``ENOBUFS``.
    """

    def __init__(self, sock: socket.socket | None = None, timeout: float = 5.0) -> None:
        if sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.bind((0, 0))
        # Errors without the request echoed back, with the kernel's explanation.
        for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            try:
                sock.setsockopt(SOL_NETLINK, option, 1)
            except OSError:  # older kernels: plain errors
                pass
        sock.settimeout(timeout)
        self.sock = sock
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def call(self, kind: int, flags: int, body: bytes, what: str = "") -> list[Message]:
        """Send one request; its answers, once acknowledged (or the dump is done).

        Raises :class:`NetlinkError` if the kernel refuses it.
        """
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        if not dump:
            flags |= NLM_F_ACK
        self.sock.send(request(kind, NLM_F_REQUEST | flags, seq, body))
        answers: list[Message] = []
        while True:
            data = self.sock.recv(65536)
            for message in split(data):
                if message.seq != seq:
                    continue  # left over from a request that timed out
                if message.type == NLMSG_ERROR:
                    code, text = parse_error(message)
                    if code:
                        raise self._error(code, kind, what, text)
                    return answers
                if message.type == NLMSG_DONE:
                    if len(message.body) >= 4:
                        (code,) = _ERROR.unpack_from(message.body)
                        if code:
                            raise self._error(-code, kind, what, None)
                    return answers
                if message.type != NLMSG_NOOP:
                    answers.append(message)

    @staticmethod
    def _error(code: int, kind: int, what: str, text: str | None) -> NetlinkError:
        subject = " ".join(part for part in (_NAMES.get(kind, str(kind)), what) if part)
        detail = f"{subject}: {os.strerror(code)}" + (f" ({text})" if text else "")
        return NetlinkError(code, detail)

    # Links

    def link(self, name: str) -> Link | None:
        """The link called ``name``, or None."""
        try:
            (answer,) = self.call(RTM_GETLINK, 0, link_request(name=name), name)
        except NetlinkError as error:
            if error.errno == errno.ENODEV:
                return None
            raise
        return parse_link(answer.body)

    def link_by_index(self, index: int) -> Link | None:
        try:
            (answer,) = self.call(RTM_GETLINK, 0, link_request(index=index), f"index {index}")
        except NetlinkError as error:
            if error.errno == errno.ENODEV:
                return None
            raise
        return parse_link(answer.body)

    def set_link(self, index: int, *, mtu: int | None = None, up: bool | None = None) -> None:
        self.call(RTM_NEWLINK, 0, link_request(index=index, mtu=mtu, up=up), f"index {index}")

    def add_link(self, name: str, kind: str) -> None:
        """Create a link of ``kind``; ``EEXIST`` if ``name`` is taken."""
        body = link_request(name=name, kind=kind)
        self.call(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"{name} type {kind}")

    def delete_link(self, index: int) -> None:
        self.call(RTM_DELLINK, 0, link_request(index=index), f"index {index}")

    # Addresses

    def get_addresses(
        self, family: int = socket.AF_INET6, index: int | None = None
    ) -> list[Address]:
        """The addresses of ``family`` on link ``index`` (every link if None)."""
        found = []
        for answer in self.call(RTM_GETADDR, NLM_F_DUMP, dump_request(family, _IFADDRMSG)):
            if answer.type != RTM_NEWADDR:
                continue
            address = parse_address(answer.body)
            if address is not None and (index is None or address.index == index):
                found.append(address)
        return found

    def add_address(self, index: int, address: IPAddress, prefixlen: int, flags: int = 0) -> None:
        body = address_request(index, address, prefixlen, flags)
        self.call(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, f"{address}/{prefixlen}")

    def delete_address(self, index: int, address: IPAddress, prefixlen: int) -> None:
        body = address_request(index, address, prefixlen)
        self.call(RTM_DELADDR, 0, body, f"{address}/{prefixlen}")

    # Routes

    def get_routes(self, family: int = socket.AF_INET6) -> list[Route]:
        """Every route of ``family``, all tables."""
        answers = self.call(RTM_GETROUTE, NLM_F_DUMP, dump_request(family, _RTMSG))
        return [parse_route(answer.body) for answer in answers if answer.type == RTM_NEWROUTE]

    def add_route(self, destination: IPNetwork, oif: int, table: int = MAIN_TABLE) -> None:
        body = route_request(destination, oif, table)
        self.call(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, str(destination))

    def delete_route(self, destination: IPNetwork, oif: int, table: int = MAIN_TABLE) -> None:
        body = route_request(destination, oif, table)
        self.call(RTM_DELROUTE, 0, body, str(destination))
