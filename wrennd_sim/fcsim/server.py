"""fcsim's HTTP API on the Unix socket: route, validate against the spec, dispatch.

Like Firecracker, every refusal is 400 with ``{"fault_message": ...}``: an
unknown path or method, a body that does not match the spec (including an
unknown field), or an operation the VM's state does not allow.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from wrennd_sim.fcsim.machine import ApiFault, Machine
from wrennd_sim.fcsim.spec import ApiSpec, Operation, SpecError

NOT_SIMULATED = (
    "fcsim does not simulate {what}: it is a Firecracker stand-in for hosts without KVM"
    " (see the fcsim section of the wrennd README)"
)


def _fault(message: str) -> web.Response:
    return web.json_response({"fault_message": message}, status=400)


class ApiServer:
    def __init__(self, machine: Machine, spec: ApiSpec) -> None:
        self.machine = machine
        self.spec = spec
        self.app = web.Application(client_max_size=64 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        try:
            op, params = self.spec.find(request.method, path)
            body = await self._body(request)
            self.spec.validate_body(op, body)
            async with self.machine.lock:
                answer = await self._dispatch(op, params, body)
        except (SpecError, ApiFault) as e:
            self.machine.log.error(f"{request.method} {path}: {e}")
            return _fault(str(e))
        self.machine.log.debug(f"{request.method} {path}: ok")
        if answer is None:
            return web.Response(status=204)
        return web.json_response(answer)

    @staticmethod
    async def _body(request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SpecError(f"An error occurred when deserializing the json body: {e}") from e

    async def _dispatch(self, op: Operation, params: dict[str, str], body: Any) -> Any:
        m = self.machine
        oid = op.operation_id
        if oid == "describeInstance":
            return m.describe()
        if oid == "getFirecrackerVersion":
            return {"firecracker_version": self.spec.version}
        if oid == "getMachineConfiguration":
            return dict(m.machine)
        if oid == "getExportVmConfig":
            return m.full_config()
        if oid == "describeBalloonConfig":
            return m.get_balloon()
        m.usable()
        sync_ops = {
            "putLogger": lambda: m.put_logger(body),
            "putMetrics": lambda: m.put_metrics(body),
            "putGuestBootSource": lambda: m.put_boot_source(body),
            "putGuestDriveByID": lambda: m.put_drive(params.get("drive_id", ""), body),
            "patchGuestDriveByID": lambda: m.patch_drive(params.get("drive_id", ""), body),
            "putGuestNetworkInterfaceByID": lambda: m.put_network_interface(
                params.get("iface_id", ""), body
            ),
            "patchGuestNetworkInterfaceByID": lambda: m.patch_network_interface(
                params.get("iface_id", ""), body
            ),
            "putMachineConfiguration": lambda: m.put_machine_config(body, partial=False),
            "patchMachineConfiguration": lambda: m.put_machine_config(body, partial=True),
            "putBalloon": lambda: m.put_balloon(body),
            "patchBalloon": lambda: m.patch_balloon(body),
        }
        if oid in sync_ops:
            sync_ops[oid]()
            return None
        if oid == "createSyncAction":
            await m.action(body)
        elif oid == "patchVm":
            await m.patch_vm(body)
        elif oid == "createSnapshot":
            await m.create_snapshot(body)
        elif oid == "loadSnapshot":
            await m.load_snapshot(body)
        else:
            raise ApiFault(NOT_SIMULATED.format(what=f"{op.method} {op.template}"))
        return None
