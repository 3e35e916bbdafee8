/// Delivery into Zaqar: subscription matching, batching per target, retries,
/// dead letters and ack bookkeeping. Built by the Delivery issue; this module
/// exists now so the package layout and dependency direction are fixed.
public enum DeliveryModule {
    public static let name = "Delivery"
}
