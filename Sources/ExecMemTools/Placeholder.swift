import ExecMem
