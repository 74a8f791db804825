"""Scripted experts for the robomimic tasks, driven by privileged simulator state.

All three are waypoint machines over OSC_POSE delta actions (translation scaled by the
controller's 5 cm per step, rotation about the world z axis for yaw alignment, gripper -1 open /
+1 closed). Randomised per episode: approach height, grasp offset, travel speed, transport
height, release height and a little action noise, so the demonstrations are diverse.
"""
from __future__ import annotations

import numpy as np

POS_SCALE = 0.05  # OSC_POSE output_max for translation (m per action unit)
ROT_SCALE = 0.5  # rad per action unit


def _quat_xyzw_to_mat(q):
    x, y, z, w = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _yaw_wxyz(q):
    w, x, y, z = q
    return np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def _wrap(a, period):
    """Wrap angle ``a`` into [-period/2, period/2)."""
    return (a + period / 2) % period - period / 2


class _RobosuiteExpert:
    def __init__(self, env, rng: np.random.Generator):
        self.env = env
        self.rng = rng
        self.reset()

    @property
    def sim(self):
        return self.env.unwrapped

    @property
    def rs(self):
        return self.env.unwrapped.rs

    def reset(self, rng: np.random.Generator | None = None) -> None:
        if rng is not None:
            self.rng = rng
        self.phase = 0
        self.count = 0
        self.integ = np.zeros(3)
        self.gain = float(self.rng.uniform(1.5, 2.5))
        self.vmax = float(self.rng.uniform(0.6, 1.0))
        self.noise = 0.02
        self._init_params()

    def _init_params(self) -> None:
        pass

    # -- state --------------------------------------------------------------------------------
    def eef(self) -> np.ndarray:
        return np.asarray(self.sim.get_obs_dict()["robot0_eef_pos"], dtype=np.float64)

    def finger_yaw(self) -> float:
        R = _quat_xyzw_to_mat(self.sim.get_obs_dict()["robot0_eef_quat"])
        y = R[:, 1]  # Panda fingers slide along the hand's y axis
        return float(np.arctan2(y[1], y[0]))

    def body_pos(self, body_id) -> np.ndarray:
        return np.array(self.rs.sim.data.body_xpos[body_id])

    def body_yaw(self, body_id) -> float:
        return float(_yaw_wxyz(self.rs.sim.data.body_xquat[body_id]))

    # -- action -------------------------------------------------------------------------------
    def move(self, target, grip: float, yaw_err: float = 0.0, vmax: float | None = None,
             tilt: np.ndarray | None = None, integral: bool = False) -> np.ndarray:
        a = np.zeros(7)
        d = np.asarray(target) - self.eef()
        if integral and np.linalg.norm(d) < 0.03:  # removes the steady-state offset under load
            self.integ = np.clip(self.integ + 0.3 * d, -0.03, 0.03)
            d = d + self.integ
        else:
            self.integ = np.zeros(3)
        v = self.gain * d / POS_SCALE
        cap = self.vmax if vmax is None else vmax
        n = np.linalg.norm(v)
        if n > cap:
            v *= cap / n
        a[:3] = v
        a[5] = np.clip(2.0 * yaw_err / ROT_SCALE, -0.6, 0.6)
        if tilt is not None:  # world-frame rotation vector (x, y) to level a held object
            a[3:5] = np.clip(2.0 * np.asarray(tilt)[:2] / ROT_SCALE, -0.4, 0.4)
        a[:6] += self.rng.normal(0.0, self.noise, size=6) * (np.abs(a[:6]) > 0.05)
        a[6] = grip
        return np.clip(a, -1.0, 1.0).astype(np.float32)

    def near(self, target, tol: float) -> bool:
        return bool(np.linalg.norm(np.asarray(target) - self.eef()) < tol)


class LiftExpert(_RobosuiteExpert):
    def _init_params(self):
        self.above = float(self.rng.uniform(0.06, 0.12))
        self.grasp_dz = float(self.rng.uniform(-0.005, 0.005))
        self.lift_to = float(self.rng.uniform(0.12, 0.2))
        self.close_steps = int(self.rng.integers(6, 10))

    def _yaw_err(self, cube):
        # a cube: align the fingers with any face (period 90 degrees)
        return _wrap(self.body_yaw(cube) - self.finger_yaw(), np.pi / 2)

    def act(self, obs=None) -> np.ndarray:
        cube = self.rs.cube_body_id
        c = self.body_pos(cube)
        if self.phase == 0:  # above the cube, aligned
            tgt = c + [0, 0, self.above]
            yaw = self._yaw_err(cube)
            if self.near(tgt, 0.015) and abs(yaw) < 0.08:
                self.phase = 1
            return self.move(tgt, -1.0, yaw)
        if self.phase == 1:  # descend
            tgt = c + [0, 0, self.grasp_dz]
            if self.near(tgt, 0.008):
                self.phase, self.count = 2, 0
            return self.move(tgt, -1.0, self._yaw_err(cube), vmax=0.5)
        if self.phase == 2:  # close
            self.count += 1
            if self.count >= self.close_steps:
                self.phase = 3
                self.lift_target = self.eef() + [0, 0, self.lift_to]
            return self.move(self.eef(), 1.0)
        return self.move(self.lift_target, 1.0)


class CanExpert(_RobosuiteExpert):
    """PickPlaceCan: grasp the can from above, carry it over its bin compartment, drop it."""

    def _init_params(self):
        self.above = float(self.rng.uniform(0.06, 0.12))
        self.grasp_dz = float(self.rng.uniform(0.0, 0.015))
        self.carry_z = float(self.rng.uniform(0.2, 0.26))
        self.release_z = float(self.rng.uniform(0.12, 0.16))
        self.carry_speed = float(self.rng.uniform(0.7, 1.0))
        self.close_steps = int(self.rng.integers(6, 10))
        self.drop_xy = self.rng.uniform(-0.02, 0.02, size=2)

    def act(self, obs=None) -> np.ndarray:
        rs = self.rs
        can_id = rs.obj_body_id["Can"]
        c = self.body_pos(can_id)
        goal = np.array(rs.target_bin_placements[rs.object_to_id["can"]])
        if self.phase == 0:
            tgt = c + [0, 0, self.above]
            if self.near(tgt, 0.015):
                self.phase = 1
            return self.move(tgt, -1.0)
        if self.phase == 1:
            tgt = c + [0, 0, self.grasp_dz]
            if self.near(tgt, 0.008):
                self.phase, self.count, self.hold = 2, 0, self.eef()
            return self.move(tgt, -1.0, vmax=0.5)
        if self.phase == 2:
            self.count += 1
            if self.count >= self.close_steps:
                self.phase = 3
            return self.move(self.hold, 1.0)
        if self.phase == 3:  # lift straight up, clear of the bin walls
            tgt = np.array([self.hold[0], self.hold[1], goal[2] + self.carry_z])
            if self.eef()[2] > goal[2] + self.carry_z - 0.02:
                self.phase = 4
            return self.move(tgt, 1.0, vmax=self.carry_speed)
        if self.phase == 4:  # carry over the target compartment
            tgt = np.array([goal[0] + self.drop_xy[0], goal[1] + self.drop_xy[1], goal[2] + self.carry_z])
            if self.near(tgt, 0.02):
                self.phase = 5
            return self.move(tgt, 1.0, vmax=self.carry_speed)
        if self.phase == 5:  # lower and release
            tgt = np.array([goal[0] + self.drop_xy[0], goal[1] + self.drop_xy[1], goal[2] + self.release_z])
            if self.near(tgt, 0.015):
                self.phase = 6
            return self.move(tgt, 1.0, vmax=0.5)
        return self.move(self.eef() + [0, 0, 0.05], -1.0)


class SquareExpert(_RobosuiteExpert):
    """NutAssemblySquare: grasp the nut's handle aligned with it, carry the nut's centre over the
    square peg with the nut's yaw matched to the peg, lower it and let go."""

    def _init_params(self):
        self.above = float(self.rng.uniform(0.06, 0.1))
        self.carry_z = float(self.rng.uniform(0.16, 0.2))
        self.drop_dz = float(self.rng.uniform(0.03, 0.04))
        self.descending, self.best_z, self.stall = False, 0.0, 0
        self.close_steps = int(self.rng.integers(6, 10))

    def act(self, obs=None) -> np.ndarray:
        rs = self.rs
        nut = rs.nuts[rs.nut_id] if hasattr(rs, "nut_id") else rs.nuts[0]
        nut_id = rs.obj_body_id[nut.name]
        handle = np.array(rs.sim.data.site_xpos[rs.sim.model.site_name2id(nut.important_sites["handle"])])
        center = self.body_pos(nut_id)
        peg = self.body_pos(rs.peg1_body_id)
        # the handle points along the nut's x axis; the fingers must be across it
        handle_dir = handle[:2] - center[:2]
        handle_yaw = np.arctan2(handle_dir[1], handle_dir[0])
        yaw_err = _wrap(handle_yaw + np.pi / 2 - self.finger_yaw(), np.pi)
        if self.phase == 0:
            tgt = handle + [0, 0, self.above]
            if self.near(tgt, 0.012) and abs(yaw_err) < 0.05:
                self.phase = 1
            return self.move(tgt, -1.0, yaw_err)
        if self.phase == 1:
            tgt = handle + [0, 0, 0.0]
            if self.near(tgt, 0.006):
                self.phase, self.count = 2, 0
            return self.move(tgt, -1.0, yaw_err, vmax=0.5)
        if self.phase == 2:
            self.count += 1
            if self.count >= self.close_steps:
                self.phase = 3
            return self.move(self.eef(), 1.0)
        # the eef holds the handle; place the nut centre over the peg
        off = center - self.eef()
        # keep the nut's yaw at the peg's (0 mod 90 degrees) by turning the hand
        nut_yaw = self.body_yaw(nut_id)
        turn = _wrap(0.0 - nut_yaw, np.pi / 2)
        # No roll / pitch commands: levelling the nut (which pivots a little in the grasp) made the
        # wrist fight the fingers' contact with the nut's rim and stalled the arm. The pivot is
        # handled by aligning above the peg, descending while holding the nut, retrying on a jam.
        tilt = None
        if self.phase == 3:  # lift
            tgt = np.array([*self.eef()[:2], peg[2] + self.carry_z])
            if self.eef()[2] > peg[2] + self.carry_z - 0.02:
                self.phase = 4
            return self.move(tgt, 1.0, turn, tilt=tilt)
        if self.phase == 4:  # over the peg
            tgt = np.array([peg[0] - off[0], peg[1] - off[1], peg[2] + self.carry_z])
            if self.near(tgt, 0.01) and abs(turn) < 0.04:
                self.phase = 5
            return self.move(tgt, 1.0, turn, tilt=tilt, integral=True)
        if self.phase == 5:  # hover above the peg top (half-height 0.1 m) until aligned, then go
            # straight down holding the nut; back off and re-align if it jams; let go once engaged
            top = peg[2] + 0.1
            hover = top + self.drop_dz
            aligned = np.linalg.norm(center[:2] - peg[:2]) < 0.002 and abs(turn) < 0.03
            engaged = center[2] < top - 0.008
            if not self.descending and aligned and center[2] > hover - 0.01:
                self.descending, self.best_z, self.stall = True, center[2], 0
            if self.descending and not engaged:
                if center[2] < self.best_z - 0.001:
                    self.best_z, self.stall = center[2], 0
                else:
                    self.stall += 1
                if self.stall > 8:  # jammed on the peg's rim
                    self.descending = False
            z = top - 0.07 if (self.descending or engaged) else hover
            tgt = np.array([peg[0] - off[0], peg[1] - off[1], z - off[2]])
            self.count = self.count + 1 if engaged else 0
            if center[2] < top - 0.045 or self.count > 40:
                self.phase, self.count = 6, 0
            return self.move(tgt, 1.0, turn, vmax=0.3, tilt=tilt, integral=True)
        if self.phase == 6:  # open
            self.count += 1
            if self.count >= 4:
                self.phase = 7
            return self.move(self.eef(), -1.0)
        return self.move(self.eef() + [0, 0, 0.05], -1.0)
