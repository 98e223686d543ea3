print("execmem")
