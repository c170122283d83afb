//! chainlog-net: the wire protocol (framing, limits, connections). Built by the node issue.
