"""What ST's aiValidation firmware (aiValidation_ATON.c) does with each request: SYNC, SYS_INFO,
NETWORK_INFO (config logs, then the model's description) and NETWORK_RUN (inputs, per-layer epochs, the
whole-inference op, the outputs), as §3.2/§3.2b describe them. Spec ambiguities and the choices made here
are marked "CHOICE".
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .board import Board, _Abort, _BadPacket
from .config import ModelSpec, Request, RunRecord, TensorSpec, _Ctx
from .wire import (CMD_DISCONNECT, CMD_NETWORK_INFO, CMD_NETWORK_RUN, CMD_SYNC, CMD_SYS_INFO, DEFAULT_PACKET_SIZE,
                   E_INVALID_PARAM, E_INVALID_SIZE, E_NONE, EPOCH_KINDS, F_IN_MEMPOOL, F_INPUT, F_INTERNAL, F_LAST,
                   F_MEMPOOL, F_NO_DATA, F_OUTPUT, FORMATS, MAX_NAME, OP_INTERNAL, OP_WITHOUT_TENSOR,
                   P_RUN_CONF_CONST_VALUE, P_RUN_CONF_DEBUG, P_RUN_MODE_PER_LAYER, P_RUN_MODE_PER_LAYER_WITH_DATA,
                   P_RUN_MODE_PERF, RT_FLAG_NO_MACC, S_DONE, S_ERROR, S_IDLE, S_PROCESSING, S_WAITING, _fields,
                   pb_parse)


class BoardEmulator(Board):
    """Emulated STM32N6570-DK running ST's aiValidation firmware: the firmware side of stm32msg v3.x on a
    pty or a TCP socket, served by one background thread (see the package docstring).

    ``BoardEmulator(config=None, transport='pty'|'socket', tcp_port=0, **overrides)``: ``overrides`` are
    BoardConfig fields applied on top of ``config`` (e.g. ``BoardEmulator(framing=2, com_param=64)``).
    """

    # ---- requests ------------------------------------------------------------------------------------------

    def _serve_one_request(self) -> None:
        self.state = "idle"
        self._ctx = None
        try:
            raw = self._read_message()
        except _BadPacket as exc:
            with self._lock:
                self.rejected.append((f"bad packet: {exc}", b""))
            return
        self.state = "busy"
        request = self._decode_request(raw)
        if request is None:
            return
        self._n_requests += 1
        self._cmd_counts[request.cmd] = self._cmd_counts.get(request.cmd, 0) + 1
        self._ctx = _Ctx(request.cmd, self._cmd_counts[request.cmd], self._n_requests, request.reqid)
        with self._lock:
            self.requests.append(request)
        self._event("request", f"reqid={request.reqid} cmd={request.cmd} param={request.param} "
                               f"name={request.name!r} opt={request.opt}")
        handler = {CMD_SYNC: self._cmd_sync, CMD_SYS_INFO: self._cmd_sys_info,
                   CMD_NETWORK_INFO: self._cmd_network_info, CMD_NETWORK_RUN: self._cmd_network_run}.get(request.cmd)
        if request.cmd == CMD_DISCONNECT and self.config.version >= 0x302:
            handler = self._cmd_disconnect
        try:
            (handler or self._cmd_unsupported)(request)
        except _Abort:
            pass

    def _decode_request(self, raw: bytes) -> Request | None:
        """reqMsg with all five required fields and a name < 64 bytes, else None (silent rejection, §3.2b)."""
        try:
            parsed = pb_parse(raw)
        except ValueError:
            parsed = None
        reason = None
        if parsed is None:
            reason = "does not parse"
        else:
            values: dict[int, Any] = {}
            for field_no, wire_type, value in parsed:
                expected = 2 if field_no == 4 else 0
                if field_no in (1, 2, 3, 4, 5):
                    if wire_type != expected:
                        reason = f"field {field_no} has wire type {wire_type}"
                        break
                    values[field_no] = value
            if reason is None:
                missing = [f for f in (1, 2, 3, 4, 5) if f not in values]
                if missing:
                    reason = f"missing required field(s) {missing}"
                elif len(values[4]) >= MAX_NAME:
                    reason = f"name of {len(values[4])} bytes"
        if reason is not None:
            with self._lock:
                self.rejected.append((reason, raw))
            self._event("rejected", f"{reason}: {raw.hex(' ')}")
            return None
        return Request(values[1], values[2], values[3], values[4].decode("utf-8", "replace"), values[5], raw)

    def _error(self, param: int = E_INVALID_PARAM, error: int = E_INVALID_PARAM) -> None:
        self._reply(S_ERROR, "ack", {"param": param, "error": error})

    def _cmd_unsupported(self, request: Request) -> None:
        # CHOICE: commands this firmware model does not implement (REPORT, MEMORY_*, TEST, and DISCONNECT in
        # protocol 3.1) get the same error answer as an unknown model.
        self._error()

    def _cmd_sync(self, request: Request) -> None:
        """SYNC -> resp(S_IDLE, sync); resets the framing-2 packet size to 32 (§3.2, §3.2b)."""
        self.packet_size = DEFAULT_PACKET_SIZE
        cfg = self.config
        self._reply(S_IDLE, "sync", {"version": cfg.version, "capability": cfg.capability,
                                     "rtid": cfg.rt_runtime | cfg.rt_tools << 8})     # sync.rtid: tools << 8

    def _cmd_disconnect(self, request: Request) -> None:
        """Protocol 3.2: no answer; packet size back to 32 (§3.2b)."""
        self.packet_size = DEFAULT_PACKET_SIZE

    def _cmd_sys_info(self, request: Request) -> None:
        """SYS_INFO -> resp(S_IDLE, sinfo); framing 2 then switches to com_param (§3.2 framing 2).

        CHOICE: the reply itself still uses the old packet size; the switch applies from the next packet on.
        """
        cfg = self.config
        payload = {"devid": cfg.devid, "sclock": cfg.sclock, "hclock": cfg.hclock, "cache": cfg.cache,
                   "extra": [cfg.extra0, cfg.npu_hz, cfg.nic_hz]}
        if cfg.version >= 0x302:
            payload["com_param"] = cfg.com_param
        self._reply(S_IDLE, "sinfo", payload)
        if cfg.framing == 2 and cfg.com_param:
            self.packet_size = cfg.com_param

    def _find_model(self, request: Request) -> ModelSpec | None:
        models = self.config.models
        if request.name:
            return next((m for m in models if m.name == request.name), None)
        return models[request.param] if 0 <= request.param < len(models) else None

    def _config_logs(self) -> list[str]:
        cfg = self.config
        if cfg.config_logs is not None:
            return cfg.config_logs
        model = cfg.models[0] if cfg.models else ModelSpec()
        version = ".".join(str(v) for v in model.runtime_version)
        return [f"s:config:version:{version}", f"s:config:dev_id:0x{cfg.devid:x}",
                f"s:config:mcu_freq:{cfg.sclock}", f"s:config:noc_freq:{cfg.noc_hz}",
                f"s:config:npu_freq:{cfg.npu_hz}", f"s:config:nic_freq:{cfg.nic_hz}", "s:config:npu_cache:1"]

    def _cmd_network_info(self, request: Request) -> None:
        """NETWORK_INFO: by name if non-empty, else by index; the 7 config logs (acked), then minfo.

        CHOICE: an unknown model gets its S_ERROR answer without the config logs.
        """
        model = self._find_model(request)
        if model is None:
            self._error()                                  # ack{param 4, error 4 E_INVALID_PARAM}
            return
        for text in self._config_logs():
            self._send_log(S_IDLE, text, "config-log")
        self.selected.add(model.name)
        self._reply(S_IDLE, "minfo", self._model_info(model))

    def _ms(self, cycles: int) -> float:
        """duration = float32(float32(cycles) * 1000) / float32(sclock), in single precision (§3.2b)."""
        return float(np.float32(np.float32(cycles) * np.float32(1000.0)) / np.float32(self.config.sclock))

    @staticmethod
    def _version_word(version: tuple[int, int, int]) -> int:
        major, minor, micro = version
        return major << 24 | minor << 16 | micro << 8

    def _tensor_desc(self, spec: TensorSpec, flags: int, default_name: str, default_addr: int) -> dict:
        return {"name": spec.name or default_name, "format": spec.format_word, "size": spec.n_elements,
                "n_dims": 0 << 24 | len(spec.shape), "dims": list(spec.shape), "scale": spec.scale,
                "zeropoint": spec.zero_point, "addr": default_addr if spec.addr is None else spec.addr,
                "flags": flags | spec.flags}

    @staticmethod
    def _addresses(tensors: Sequence[TensorSpec], base: int) -> list[int]:
        out, addr = [], base
        for t in tensors:
            out.append(addr)
            addr += (t.n_bytes + 31) & ~31
        return out

    def _model_info(self, model: ModelSpec) -> dict:
        cfg = self.config
        flags = cfg.rt_flags if cfg.rt_flags is not None else (RT_FLAG_NO_MACC if model.macc == 0 else 0)
        in_addr = self._addresses(model.inputs, 0x34200000)
        out_addr = self._addresses(model.outputs, 0x34300000)
        info = {
            "name": model.name,
            "rtid": cfg.rt_runtime | cfg.rt_tools << 16 | flags << 24,          # minfo.rtid: tools << 16
            "signature": model.signature, "compile_datetime": model.compile_datetime,
            "runtime_version": self._version_word(model.runtime_version),
            "tool_version": self._version_word(model.tool_version),
            "n_macc": model.macc, "n_nodes": sum(e.span for e in model.epochs),
            "n_inputs": len(model.inputs),
            "inputs": [self._tensor_desc(t, F_INPUT | F_IN_MEMPOOL, f"input_{i + 1}", in_addr[i])
                       for i, t in enumerate(model.inputs)],
            "n_outputs": len(model.outputs),
            "outputs": [self._tensor_desc(t, F_OUTPUT | F_IN_MEMPOOL, f"output_{i + 1}", out_addr[i])
                        for i, t in enumerate(model.outputs)],
            # CHOICE: activations / params described as one u8 MEMPOOL buffer each (the spec gives no layout).
            "n_activations": 1,
            "activations": [{"name": "activations", "format": FORMATS["uint8"], "size": model.activations_size,
                             "n_dims": 1, "dims": [model.activations_size], "addr": 0x34200000,
                             "flags": F_MEMPOOL}],
            "n_params": 1,
            "params": [{"name": "weights", "format": FORMATS["uint8"], "size": model.params_size, "n_dims": 1,
                        "dims": [model.params_size], "addr": 0x71000000, "flags": F_MEMPOOL}],
            "runtime_desc": model.runtime_desc,
        }
        if cfg.version >= 0x302:
            info["n_install_time"] = self._ms(model.install_cycles)
            info["n_init_time"] = self._ms(model.init_cycles)
        return info

    # ---- CMD_NETWORK_RUN (§3.2 RUN, §3.2b) ------------------------------------------------------------------

    def _cmd_network_run(self, request: Request) -> None:
        cfg = self.config
        model = next((m for m in cfg.models if m.name == request.name), None) if request.name else None
        run = RunRecord(request.name, request.reqid, request.param, request.opt)
        with self._lock:
            self.runs.append(run)
        if model is None or (cfg.run_requires_info and model.name not in self.selected):
            run.error = "unknown model" if model is None else "model not selected by NETWORK_INFO"
            self._error()
            return
        mode = request.param
        const_value = bool(mode & P_RUN_CONF_CONST_VALUE)
        perf = bool(mode & P_RUN_MODE_PERF)
        if mode & P_RUN_CONF_DEBUG:                      # DEBUG: logs before the first ack (§3.2b)
            for text in cfg.debug_logs:
                self._send_log(S_WAITING, text, "debug-log")
        # 1. S_WAITING ack{param = bytes of input 0}
        self._reply(S_WAITING, "ack", {"param": model.inputs[0].n_bytes if model.inputs else 0, "error": E_NONE})
        # 2. one aiDataMsg per input; ack{bytes received}; then the host's ackMsg
        wrong_size = {f.input for f in self._faults(None, ("wrong_size",))}
        for index, spec in enumerate(model.inputs):
            try:
                raw = self._read_message()
            except _BadPacket:
                raw = b""
            fields = _fields(raw)
            datas = fields.get(4, b"")
            datas = datas if isinstance(datas, bytes) else b""
            run.inputs.append(datas)
            run.data_msgs.append({"type": fields.get(1), "size": fields.get(2), "addr": fields.get(3)})
            expected = spec.elem_size if const_value else spec.n_bytes
            if len(datas) != expected or index in wrong_size:
                run.error = f"E_INVALID_SIZE on input {index}: {len(datas)} bytes, expected {expected}"
                self._event("run", run.error)
                self._reply(S_ERROR, "ack", {"param": len(datas), "error": E_INVALID_SIZE})
                return
            run.full_inputs.append(datas * spec.n_elements if const_value else datas)   # broadcast
            last = index == len(model.inputs) - 1
            self._reply(S_PROCESSING if last else S_WAITING, "ack", {"param": len(datas), "error": E_NONE})
            self._wait_ack("run-data")
        # inference
        count = self._run_counts.get(model.name, 0)
        self._run_counts[model.name] = count + 1
        cpu_all = model.cycles[count % len(model.cycles)] if model.cycles else 0
        run.cycles = cpu_all
        if cfg.run_delay:
            self._sleep(cfg.run_delay)
        # 3. per-layer: per epoch its logs, op, tensors
        if mode & (P_RUN_MODE_PER_LAYER | P_RUN_MODE_PER_LAYER_WITH_DATA):
            self._per_layer(model, with_data=bool(mode & P_RUN_MODE_PER_LAYER_WITH_DATA))
        # 4. the whole-inference op: type flags 0, 64-bit counters as lo/hi u32 pairs
        start, end = model.run_start_cycles, model.run_end_cycles
        core = max(0, cpu_all - start - end)
        counters = []
        for value in (start, core, end, cpu_all, model.run_extra):
            counters += [value & 0xFFFFFFFF, (value >> 32) & 0xFFFFFFFF]
        run.duration_ms = self._ms(cpu_all)
        self._reply(S_PROCESSING, "op", {"name": model.name, "type": 0, "id": 0, "duration": run.duration_ms,
                                         "counter_type": 0, "counters": counters, "stack_used": -1,
                                         "heap_used": -1})
        # 5. the outputs; the last one with S_DONE; no acks
        out_addr = self._addresses(model.outputs, 0x34300000)
        for index, spec in enumerate(model.outputs):
            last = index == len(model.outputs) - 1
            datas = b"" if perf else self._output_bytes(model, index, run.full_inputs)
            flags = F_OUTPUT | (F_NO_DATA if perf else 0) | (F_LAST if last else 0)
            run.outputs.append(datas)
            self._reply(S_DONE if last else S_PROCESSING, "tensor", {
                "desc": self._tensor_desc(spec, flags, f"output_{index + 1}", out_addr[index]),
                # CHOICE: data.size = bytes actually carried (0 in PERF mode, where datas is empty but present)
                "data": {"type": 0, "size": len(datas), "addr": out_addr[index], "datas": datas}})
        run.done = True

    def _per_layer(self, model: ModelSpec, with_data: bool) -> None:
        """Per epoch: logs (acked), op{INTERNAL|kind[|WITHOUT_TENSOR]}, then its tensors (§3.2b)."""
        cfg = self.config
        number = cfg.epoch_base
        for epoch in model.epochs:
            last_number = number + epoch.span - 1
            logs = epoch.logs
            if logs is None:
                logs = [f"s:node:mcu_cycles:{epoch.start}:{epoch.cycles}:{epoch.end}"]
                if epoch.kind_value != EPOCH_KINDS["SW"]:
                    logs.append(f"s:node:npu_cycles:{round(epoch.cycles * cfg.npu_hz / cfg.sclock)}")
            for text in logs:
                self._send_log(S_PROCESSING, text, "node-log")
            op_type = OP_INTERNAL | epoch.kind_value | (0 if epoch.tensors else OP_WITHOUT_TENSOR)
            # CHOICE: the epoch duration covers start + core + end cycles
            self._reply(S_PROCESSING, "op", {
                "name": epoch.name or f"epoch_{number}", "type": op_type, "id": last_number << 16 | number,
                "duration": self._ms(epoch.start + epoch.cycles + epoch.end), "counter_type": 0x10000,
                "counters": [epoch.start, epoch.cycles, epoch.end], "stack_used": -1, "heap_used": -1})
            addrs = self._addresses(epoch.tensors, 0x34100000)
            for index, spec in enumerate(epoch.tensors):
                datas = self._pattern(spec.n_bytes, number * 16 + index) if with_data else b""
                flags = F_INTERNAL | (0 if with_data else F_NO_DATA)
                self._reply(S_PROCESSING, "tensor", {
                    "desc": self._tensor_desc(spec, flags, f"epoch_{number}_tensor_{index}", addrs[index]),
                    "data": {"type": 0, "size": len(datas), "addr": addrs[index], "datas": datas}})
            number = last_number + 1

    @staticmethod
    def _pattern(n: int, seed: int) -> bytes:
        return ((np.arange(n, dtype=np.int64) * 7 + seed) % 251).astype(np.uint8).tobytes()

    def _output_bytes(self, model: ModelSpec, index: int, inputs: list[bytes]) -> bytes:
        source = model.output_data
        if isinstance(source, (list, tuple)):
            source = source[index]
        elif isinstance(source, (bytes, bytearray)) and index > 0 and len(model.outputs) > 1:
            source = None
        if source is None:
            return self._pattern(model.outputs[index].n_bytes, index)
        if callable(source):
            result = source(*inputs)
            if isinstance(result, (list, tuple)):
                result = result[index]
            return bytes(result)
        return bytes(source)
