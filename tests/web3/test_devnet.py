"""A real Ethereum client (web3.py) against a LuxTensor devnet.

Run by tests/web3/run.sh (which starts the devnet and a virtual environment);
arguments: HTTP URL, WebSocket URL, BLS public key, proof of possession, and
optionally the staker's private key (a devnet account; an owner stakes once,
so a second run against the same devnet, e.g. through the proxy, uses another).
Every check raises on failure; the script exits non-zero.
"""

import asyncio
import sys

from eth_account import Account
from web3 import AsyncWeb3, Web3, WebSocketProvider

HTTP, WS, BLS_KEY, POP = sys.argv[1:5]
TIMEOUT = 60
# The first development accounts of the Hardhat/Anvil mnemonic.
SENDER = Account.from_key("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
STAKER = Account.from_key(
    sys.argv[5] if len(sys.argv) > 5 else "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba"
)
RECIPIENT = "0x000000000000000000000000000000000000bEEF"


def check(condition, message):
    if not condition:
        raise AssertionError(message)
    print("ok:", message)


def blocks_by_number_and_hash(w3):
    check(w3.eth.chain_id == 31337, "eth_chainId is the devnet's")
    head = w3.eth.block_number
    check(head >= 1, f"blocks are finalized (head {head})")
    by_number = w3.eth.get_block(head)
    by_hash = w3.eth.get_block(by_number["hash"])
    check(by_hash["number"] == head and by_hash["hash"] == by_number["hash"], "block by number == by hash")
    parent = w3.eth.get_block(head - 1)
    check(by_number["parentHash"] == parent["hash"], "parentHash links to the previous block")


def transfer(w3):
    before = w3.eth.get_balance(RECIPIENT)
    tx = {
        "chainId": 31337,
        "nonce": w3.eth.get_transaction_count(SENDER.address),
        "to": RECIPIENT,
        "value": 12345,
        "gas": 21000,
        "maxFeePerGas": 10**10,
        "maxPriorityFeePerGas": 10**9,
        "type": 2,
    }
    signed = SENDER.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    check(tx_hash == signed.hash, "eth_sendRawTransaction returns the transaction hash")
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=TIMEOUT, poll_latency=0.2)
    check(receipt["status"] == 1, "the transfer succeeded")
    check(w3.eth.get_balance(RECIPIENT) == before + 12345, "the recipient's balance grew by the value")
    fetched = w3.eth.get_transaction(tx_hash)
    check(fetched["from"] == SENDER.address and fetched["value"] == 12345, "eth_getTransactionByHash")


async def heads_and_staking_logs(staking_address, abi):
    async with AsyncWeb3(WebSocketProvider(WS)) as w3:
        await w3.eth.subscribe("newHeads")
        numbers = []
        async def collect():
            async for message in w3.socket.process_subscriptions():
                number = message["result"]["number"]
                numbers.append(int(number, 16) if isinstance(number, str) else number)
                if len(numbers) == 4:
                    return
        await asyncio.wait_for(collect(), TIMEOUT)
        check(numbers == list(range(numbers[0], numbers[0] + 4)), f"newHeads arrive in order: {numbers}")
        await w3.eth.unsubscribe((await w3.eth.subscribe("newHeads")))

    async with AsyncWeb3(WebSocketProvider(WS)) as w3:
        contract = w3.eth.contract(address=staking_address, abi=abi)
        await w3.eth.subscribe("logs", {"address": staking_address})
        value = 32 * 10**18
        call = contract.functions.stake(bytes.fromhex(BLS_KEY[2:]), bytes.fromhex(POP[2:]))
        tx = await call.build_transaction({
            "chainId": 31337,
            "from": STAKER.address,
            "nonce": await w3.eth.get_transaction_count(STAKER.address),
            "value": value,
            "gas": 200000,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9,
        })
        signed = STAKER.sign_transaction(tx)
        tx_hash = await w3.eth.send_raw_transaction(signed.raw_transaction)

        async def first_log():
            async for message in w3.socket.process_subscriptions():
                return message["result"]
        log = await asyncio.wait_for(first_log(), TIMEOUT)
        check(log["transactionHash"] == tx_hash, "the staking event arrives on the logs subscription")
        event = contract.events.StakeRequested().process_log(log)
        check(event["args"]["owner"] == STAKER.address, "StakeRequested names the staker")
        check(event["args"]["amount"] == value, "StakeRequested carries the stake")


def main():
    w3 = Web3(Web3.HTTPProvider(HTTP, request_kwargs={"timeout": TIMEOUT}))
    blocks_by_number_and_hash(w3)
    transfer(w3)
    staking = w3.provider.make_request("lux_stakingContract", [])["result"]
    address = Web3.to_checksum_address(staking["address"])
    asyncio.run(heads_and_staking_logs(address, staking["abi"]))
    print("web3.py: all checks passed")


if __name__ == "__main__":
    main()
