"""WorldSim's Gymnasium envs. Importing this package registers their ids."""

from worldsim.registration import register_envs

register_envs()
