"""Event-driven federated training on a simulated clock, after FederatedScope.

Server and clients are nodes that handle typed messages (JOIN, TRAIN, UPDATE,
EVALUATE, METRICS, FINISH and the server's START and TIMEOUT timers) delivered in
order of simulated time. Client dropout, stragglers with per-client speeds, deadlines
with partial work and buffered asynchronous aggregation (FedBuff) are behaviours:
handlers installed on the nodes, not branches of a loop.

    from fl.runtime import ClientProfile, Deadline, simulate
    result = simulate("mlp", subsets, FedProx(mu=0.01), rounds=20, test=test,
                      profiles=[ClientProfile(speed=s) for s in speeds],
                      behaviours=[Deadline(seconds=60.0)])

``fl.server.run_federated`` is ``simulate`` with no behaviours and default profiles.
"""

from fl.runtime.behaviours import Deadline, Dropout
from fl.runtime.client import Client
from fl.runtime.events import EventQueue, Node
from fl.runtime.fedbuff import FedBuff
from fl.runtime.messages import SERVER, Kind, Message
from fl.runtime.profiles import ClientProfile
from fl.runtime.server import RoundRecord, Server
from fl.runtime.simulation import Behaviour, Simulation, SimulationResult, simulate

__all__ = [
    "SERVER",
    "Behaviour",
    "Client",
    "ClientProfile",
    "Deadline",
    "Dropout",
    "EventQueue",
    "FedBuff",
    "Kind",
    "Message",
    "Node",
    "RoundRecord",
    "Server",
    "Simulation",
    "SimulationResult",
    "simulate",
]
