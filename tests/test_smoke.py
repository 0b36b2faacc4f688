"""The basics, end to end."""

from broadcast_sync.server import BroadcastServer
from tests.conftest import join, receive


def test_two_clients_chat(server: BroadcastServer) -> None:
    """A message reaches both clients, the sender included."""
    alice = join(server, "alice")
    bob = join(server, "bob")
    assert receive(alice) == "Server: bob has joined the chat"
    alice.send("hello")
    assert receive(alice) == "alice: hello"
    assert receive(bob) == "alice: hello"
    bob.close()
    assert receive(alice) == "Server: bob has left the chat"
    alice.close()
