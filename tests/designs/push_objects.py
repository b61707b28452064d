# ocp_vscode's newer incremental calls: push_object(obj, name, color, alpha), then show_objects().
from build123d import Box, Pos
from ocp_vscode import push_object, show_objects

push_object(Box(10, 10, 10), name="cube", color="red", alpha=0.5)
bar = Pos(20, 0, 0) * Box(4, 4, 20)
push_object(bar)
show_objects()
