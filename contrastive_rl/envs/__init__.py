"""Goal environments: gymnasium-robotics goal envs, OGBench's envs as goal envs, image goals, videos and
scripted data policies (as torchrl/envs)."""
