import sys
sys.path.insert(0, "tests")
import torch
from test_cuda_graph import small_net, rel
from vmambair import ops
from vmambair.engine.cuda_graph import GraphedForward
net = small_net().cuda().eval()
g = GraphedForward(net, max_graphs=1)
with ops.fused_omni_scan(True), torch.no_grad():
    for shape in [(1, 3, 32, 40), (2, 3, 24, 24)]:
        for _ in range(3):
            x = torch.rand(shape, device="cuda")
            y = g(x).clone()
            ref = net(x)
            eag = [rel(net(x), ref) for _ in range(5)]
            print(shape, "graph vs eager %.2e" % rel(y, ref), "eager vs eager max %.2e" % max(eag), "graph again %.2e" % rel(g(x), y))
