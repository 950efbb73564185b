from __future__ import annotations

from duplex.inspect.fds import FdLink, Owner, describe_link, owners_by_inode, socket_inode


def test_socket_inode() -> None:
    assert socket_inode("socket:[12345]") == 12345
    assert socket_inode("pipe:[12345]") is None
    assert socket_inode("socket:[abc]") is None
    assert socket_inode("/dev/null") is None


def test_describe_link() -> None:
    assert describe_link("socket:[1]") == "socket"
    assert describe_link("pipe:[1]") == "pipe"
    assert describe_link("anon_inode:[eventpoll]") == "anon"
    assert describe_link("/dev/pts/0") == "dev"
    assert describe_link("/tmp/x.log") == "file"


def test_owners_by_inode_keeps_every_holder() -> None:
    # After fork() parent and child hold the same socket: both are owners.
    links = [
        FdLink(20, 4, "socket:[7]"),
        FdLink(10, 4, "socket:[7]"),
        FdLink(10, 3, "socket:[6]"),
        FdLink(10, 5, "pipe:[9]"),
    ]
    owners = owners_by_inode(links, {10: "server", 20: "child"})
    assert owners == {
        7: [Owner(10, 4, "server"), Owner(20, 4, "child")],
        6: [Owner(10, 3, "server")],
    }
    assert str(owners[6][0]) == "pid 10 server fd 3"
    assert owners[6][0].as_dict() == {"pid": 10, "fd": 3, "comm": "server"}
