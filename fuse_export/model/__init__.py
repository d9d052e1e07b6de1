"""Model: the shared ResNet-18 trunk, the DCNN and SCN heads, the SCN losses, the stacker and the fused net."""
