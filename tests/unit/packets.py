"""Packets as the simulator sees them (field dicts), for compiler tests."""
from dataplane.match_action import BROADCAST_MAC, ETH_TYPE_ARP, ETH_TYPE_IP


def icmp(src_mac, dst_mac, src_ip, dst_ip, ttl=64, icmp_type=8):
    return {"eth_src": src_mac, "eth_dst": dst_mac, "eth_type": ETH_TYPE_IP, "ip_ttl": ttl,
            "ipv4_src": src_ip, "ipv4_dst": dst_ip, "ip_proto": 1, "icmpv4_type": icmp_type,
            "icmpv4_code": 0}


def tcp(src_mac, dst_mac, src_ip, dst_ip, sport, dport, ttl=64):
    return {"eth_src": src_mac, "eth_dst": dst_mac, "eth_type": ETH_TYPE_IP, "ip_ttl": ttl,
            "ipv4_src": src_ip, "ipv4_dst": dst_ip, "ip_proto": 6, "tcp_src": sport, "tcp_dst": dport}


def arp_request(src_mac, src_ip, target_ip):
    return {"eth_src": src_mac, "eth_dst": BROADCAST_MAC, "eth_type": ETH_TYPE_ARP, "arp_op": 1,
            "arp_sha": src_mac, "arp_spa": src_ip, "arp_tha": "00:00:00:00:00:00",
            "arp_tpa": target_ip}
