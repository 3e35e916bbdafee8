import Delivery
import Testing

@Suite("Delivery module")
struct DeliveryModuleTests {
    @Test("the module links into the test bundle")
    func links() {
        #expect(DeliveryModule.name == "Delivery")
    }
}
